//! Guest side of the microhost contract: the bindings of the `service` world and a small,
//! buffered request/response API on top of `wasi:http`, so a service is one `impl Service`
//! whose handler returns `Result<Response, Error>` and uses `?` throughout.
//!
//! ```ignore
//! use microhost_guest::{Error, Request, Response, Service, kv::Store};
//!
//! struct Hello;
//! impl Service for Hello {
//!     fn handle(req: Request) -> Result<Response, Error> {
//!         let store = Store::open()?;
//!         let count = store.get_json::<u64>("count")?.unwrap_or(0) + 1;
//!         store.set_json("count", &count)?;
//!         Ok(Response::json(200, &serde_json::json!({ "path": req.path, "count": count })))
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
mod error;
pub mod events;
mod http;
pub mod kv;
pub mod page;

pub use bindings::microhost::platform::types::Event;
pub use error::Error;
pub use http::{Request, Response, serve};
pub use page::{Page, PageRequest};

/// A microhost service: one function from a request to a response, and optionally one
/// from an event to an acknowledgement. Each call runs in a fresh instance, so nothing
/// survives between calls except what is stored in [`kv`].
pub trait Service {
    /// Answers a request. `Err` is answered too: [`Error::Response`] as it is (a 4xx is
    /// a value like any other), anything else as a problem body (see [`Error`]).
    fn handle(req: Request) -> Result<Response, Error>;

    /// Handles an event from a topic the manifest subscribes the service to. `Ok`
    /// acknowledges it; `Err` has the host retry it (with backoff, up to the
    /// subscription's `max_deliver`), then dead-letter it with the error's message.
    fn on_event(event: Event) -> Result<(), Error> {
        Err(Error::other(format!(
            "this service does not handle events (got one from topic {:?})",
            event.topic
        )))
    }

    /// Whether this version can serve (`microhost:platform/lifecycle`): asked before it
    /// takes traffic and periodically after. `Err` says why not.
    fn health() -> Result<(), Error> {
        Ok(())
    }
}

impl Event {
    /// The event's data parsed as JSON, or an error naming the topic.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.data)
            .map_err(|e| Error::other(format!("{} event is not valid JSON: {e}", self.topic)))
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
                <$ty as $crate::Service>::on_event(event).map_err(|e| e.to_string())
            }
        }
        impl $crate::bindings::exports::microhost::platform::lifecycle::Guest for __MicrohostExport {
            fn health() -> Result<(), String> {
                <$ty as $crate::Service>::health().map_err(|e| e.to_string())
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
