//! The host side of every WIT interface a service may import. Each capability is one
//! module with one shape (state, view, `impl Host`); [`add_to_linker`] is the only place
//! where the linker learns about them.

pub(crate) mod auth;
pub(crate) mod events;
pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod outgoing;
mod state;

pub(crate) use outgoing::Egress;
pub(crate) use state::{InvocationState, RequestContext, ServiceGrants};
use wasmtime::component::Linker;

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "microhost:platform/platform",
        imports: {
            "microhost:platform/auth.hash-password": async | trappable,
            "microhost:platform/auth.verify-password": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::kv::BucketHandle,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::kv::KvError,
        },
    });
}

pub(crate) use generated::PlatformPre as SubscriberPre;
/// The `microhost:platform/subscriber` export, for the runtime to call.
pub(crate) use generated::microhost::platform::types::Event as WitEvent;

/// Links everything the `service` world imports: WASI (cli, clocks, random, io,
/// filesystem and sockets, all without ambient authority), `wasi:http`,
/// `wasi:config/store`, `wasi:keyvalue/store`, `microhost:platform/events` and
/// `microhost:platform/auth`.
pub(crate) fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    wasmtime_wasi_config::add_to_linker(linker, |s: &mut InvocationState| {
        wasmtime_wasi_config::WasiConfig::from(&*s.granted.config)
    })?;
    kv::add_to_linker(linker)?;
    events::add_to_linker(linker)?;
    auth::add_to_linker(linker)?;
    Ok(())
}

/// What the capability tests share: a service spec from a few manifest lines.
#[cfg(test)]
pub(crate) mod test_spec {
    use crate::config::ServiceSpec;

    /// The spec of service `orders` with `extra` manifest lines.
    pub(crate) fn spec(extra: &str) -> ServiceSpec {
        let text = format!(
            "name = \"orders\"\nroute = \"/\"\ncomponent = {{ path = \"x.wasm\", version = \"1\" }}\n{extra}"
        );
        toml::from_str(&text).expect("the test spec parses")
    }
}
