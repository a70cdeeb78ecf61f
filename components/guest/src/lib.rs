//! Guest side of the microhost contract: the bindings of the `service` world and a small,
//! buffered request/response API on top of `wasi:http`, so a service is one `impl Service`.
//!
//! ```ignore
//! struct Hello;
//! impl microhost_guest::Service for Hello {
//!     fn handle(req: microhost_guest::Request) -> microhost_guest::Response {
//!         microhost_guest::Response::text(200, format!("hello from {}", req.path))
//!     }
//! }
//! microhost_guest::service!(Hello);
//! ```

pub mod bindings {
    //! Generated bindings of `microhost:platform/service` (every import, and the export
    //! macro used by [`service!`](crate::service)).
    wit_bindgen::generate!({
        path: "../../wit",
        world: "microhost:platform/service",
        pub_export_macro: true,
        export_macro_name: "export_service",
        generate_all,
    });
}

pub mod auth;
pub mod client;
pub mod events;
mod http;
pub mod kv;

pub use bindings::microhost::platform::types::Event;
pub use http::{Request, Response, serve};

/// A microhost service: one function from a request to a response, and optionally one
/// from an event to an acknowledgement. Each call runs in a fresh instance, so nothing
/// survives between calls except what is stored in [`kv`].
pub trait Service {
    fn handle(req: Request) -> Response;

    /// Handles an event from a topic the manifest subscribes the service to. `Ok`
    /// acknowledges it; `Err` has the host retry it (with backoff, up to the
    /// subscription's `max_deliver`), then dead-letter it.
    fn on_event(event: Event) -> Result<(), String> {
        Err(format!(
            "this service does not handle events (got one from topic {:?})",
            event.topic
        ))
    }

    /// Whether this version can serve (`microhost:platform/lifecycle`): asked before it
    /// takes traffic and periodically after. `Err` says why not.
    fn health() -> Result<(), String> {
        Ok(())
    }
}

/// Exports `$ty` (an implementation of [`Service`]) as the component's
/// `wasi:http/incoming-handler`, `microhost:platform/subscriber` and
/// `microhost:platform/lifecycle`.
#[macro_export]
macro_rules! service {
    ($ty:ty) => {
        struct __MicrohostExport;
        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for __MicrohostExport {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::serve::<$ty>(request, out)
            }
        }
        impl $crate::bindings::exports::microhost::platform::subscriber::Guest for __MicrohostExport {
            fn handle(event: $crate::Event) -> Result<(), String> {
                <$ty as $crate::Service>::on_event(event)
            }
        }
        impl $crate::bindings::exports::microhost::platform::lifecycle::Guest for __MicrohostExport {
            fn health() -> Result<(), String> {
                <$ty as $crate::Service>::health()
            }
        }
        $crate::bindings::export_service!(__MicrohostExport with_types_in $crate::bindings);
    };
}

/// A configuration value from the service's manifest entry (`[service.config]`).
pub fn config(key: &str) -> Option<String> {
    bindings::wasi::config::store::get(key).ok().flatten()
}

/// A new identifier that sorts by creation time: 12 hex digits of milliseconds since the
/// Unix epoch, then 12 random hex digits (`0194f3c2a1b7e3c9d1a2f4b6`).
pub fn new_id() -> String {
    let millis = now_ms();
    let random = bindings::wasi::random::random::get_random_u64() & 0xffff_ffff_ffff;
    format!("{:012x}{:012x}", millis & 0xffff_ffff_ffff, random)
}

/// Milliseconds since the Unix epoch (wall clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
