//! The one path for every call into a service, from the edge or from the bus: pin the
//! active version for the whole call, invoke it, and commit the invocation's unit of
//! work when it succeeded. Service-to-service calls will go through here too, so that a
//! policy (breaker, concurrency limit) means the same thing whoever calls.

use crate::bus::unit::UnitOfWork;
use crate::bus::{Bus, Item};
use crate::registry::ServiceSlot;
use crate::runtime::{InvokeError, Runtime};
use crate::store::StoreError;
use bytes::Bytes;
use std::sync::Arc;

/// The result of one HTTP call, with the version that handled it.
pub struct Outcome {
    pub version: String,
    pub result: Result<http::Response<Bytes>, InvokeError>,
}

/// Why an event delivery did not take.
#[derive(Debug)]
pub enum DeliveryError {
    /// The handler failed (error, trap, timeout) or its effects could not be saved: retry.
    Failed(String),
    /// The item is no longer the subscription's to acknowledge (replayed, or already
    /// acknowledged): nothing was committed; look at the subscription again.
    Conflict(String),
}

/// Calls services.
#[derive(Clone)]
pub struct Dispatcher {
    runtime: Arc<Runtime>,
    bus: Arc<Bus>,
}

impl Dispatcher {
    pub fn new(runtime: Arc<Runtime>, bus: Arc<Bus>) -> Dispatcher {
        Dispatcher { runtime, bus }
    }

    /// Runs `request` on the version of `slot` that is active now. A deploy during the
    /// call does not affect it: the pinned version stays alive until the call ends.
    /// The invocation's writes and events commit only if it answers below 500.
    pub async fn call(&self, slot: &ServiceSlot, request: http::Request<Bytes>) -> Outcome {
        let pinned = slot.pin();
        let version = pinned.version().label.clone();
        let traceparent = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let result = self
            .runtime
            .handle_http(
                &pinned.version().prepared,
                slot.invocation_context(&version, traceparent),
                request,
            )
            .await;
        let result = match result {
            Ok((response, unit)) => {
                if response.status().is_server_error() {
                    Ok(response)
                } else {
                    self.commit(&unit).await.map(|()| response)
                }
            }
            Err(e) => Err(e),
        };
        Outcome { version, result }
    }

    async fn commit(&self, unit: &UnitOfWork) -> Result<(), InvokeError> {
        self.bus
            .commit(unit, None)
            .await
            .map(|_| ())
            .map_err(|e| InvokeError::Storage(e.to_string()))
    }

    /// Delivers `item` to the active version of `slot`. On success the handler's
    /// effects and the acknowledgement commit together.
    pub async fn deliver(
        &self,
        slot: &ServiceSlot,
        item: &Item,
        attempt: u32,
    ) -> Result<(), DeliveryError> {
        let pinned = slot.pin();
        let version = pinned.version().label.clone();
        let cx = slot.invocation_context(&version, item.event.traceparent.clone());
        let outcome = self
            .runtime
            .handle_event(&pinned.version().prepared, cx, &item.event, attempt)
            .await;
        match outcome {
            Err(e) => Err(DeliveryError::Failed(format!("{version}: {e}"))),
            Ok((Err(message), _dropped)) => Err(DeliveryError::Failed(format!(
                "{version}: the handler returned an error: {message}"
            ))),
            Ok((Ok(()), unit)) => match self.bus.commit(&unit, Some(&item.ack)).await {
                Ok(_) => Ok(()),
                Err(StoreError::Conflict(why)) => Err(DeliveryError::Conflict(why)),
                Err(e) => Err(DeliveryError::Failed(e.to_string())),
            },
        }
    }
}
