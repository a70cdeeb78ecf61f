//! The one path for every call into a service: pin the active version for the whole
//! call, invoke it, and report which version answered. The gateway uses it today;
//! service-to-service calls and event deliveries will go through it too, so that a
//! policy (breaker, concurrency limit) means the same thing whoever calls.

use crate::registry::ServiceSlot;
use crate::runtime::{InvokeError, Runtime};
use bytes::Bytes;
use std::sync::Arc;

/// The result of one call, with the version that handled it.
pub struct Outcome {
    pub version: String,
    pub result: Result<http::Response<Bytes>, InvokeError>,
}

/// Calls services.
#[derive(Clone)]
pub struct Dispatcher {
    runtime: Arc<Runtime>,
}

impl Dispatcher {
    pub fn new(runtime: Arc<Runtime>) -> Dispatcher {
        Dispatcher { runtime }
    }

    /// Runs `request` on the version of `slot` that is active now. A deploy during the
    /// call does not affect it: the pinned version stays alive until the call ends.
    pub async fn call(&self, slot: &ServiceSlot, request: http::Request<Bytes>) -> Outcome {
        let pinned = slot.pin();
        let version = pinned.version().label.clone();
        let result = self
            .runtime
            .handle_http(
                &pinned.version().prepared,
                slot.invocation_context(),
                request,
            )
            .await;
        Outcome { version, result }
    }
}
