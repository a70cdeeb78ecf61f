//! One invocation of a service: a fresh `Store` with CPU and memory limits, the HTTP
//! handler (response buffered whole) or the event subscriber, and the invocation's
//! buffered effects handed back for the caller to commit or drop.

use super::component::Warm;
use super::{InvocationState, Prepared, Runtime};
use crate::body::BodyError;
use crate::bus::envelope::Envelope;
use crate::bus::unit::UnitOfWork;
use crate::capability::{RequestContext, ServiceGrants, WitEvent};
use bytes::Bytes;
use http_body_util::Full;
use std::future::Future;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTableError;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

/// Largest response body a service may produce; the gateway buffers it whole so that
/// nothing reaches the client before the invocation's outcome is known.
pub(super) const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Extra time after the CPU deadline before the invocation is abandoned outright (for a
/// guest that is blocked in the host rather than running).
const TIMEOUT_GRACE: Duration = Duration::from_millis(50);

/// Why an invocation produced no usable result. `crate::outcome` classifies each (status,
/// commit, breaker and canary verdict, retry).
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvokeError {
    #[error("the service trapped: {0}")]
    Trap(String),
    #[error("the service did not answer within its timeout of {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the service exceeded its memory limit of {} MiB", .0 / (1024 * 1024))]
    MemoryLimit(usize),
    #[error("the service returned without sending a response")]
    NoResponse,
    #[error("the service answered with an error: {0}")]
    ErrorResponse(String),
    #[error("the service's response body is larger than {MAX_RESPONSE_BYTES} bytes")]
    ResponseTooLarge,
    #[error("the service answered status {0}, which is not an HTTP status (100 to 599)")]
    InvalidStatus(u16),
    #[error("no instance could be created for the service: {0}")]
    Instantiate(String),
    #[error("no instance could be created for the service: {0}")]
    NoCapacity(String),
    #[error("the service does not export microhost:platform/subscriber")]
    NotASubscriber,
    #[error("the handler returned an error: {0}")]
    Rejected(String),
}

impl InvokeError {
    /// No instance: the pool is full (the host's capacity), or the component failed to
    /// start (its own fault: a start function that traps, an import that does not link).
    fn instantiate(e: wasmtime::Error) -> InvokeError {
        let full = e
            .chain()
            .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>());
        let why = format!("{e:#}");
        if full {
            InvokeError::NoCapacity(why)
        } else {
            InvokeError::Instantiate(why)
        }
    }
}

/// How a guest call ended, and the store (with the unit of work and the limiter's
/// verdict) and the instance, if one was made.
type GuestOutcome<T> = (
    Result<T, GuestFailure>,
    Store<InvocationState>,
    Option<Proxy>,
);

enum GuestFailure {
    /// No instance could be made (the pool is exhausted, or an import failed to link).
    Instantiate(wasmtime::Error),
    /// The handler itself failed (trap, deadline, memory).
    Call(wasmtime::Error),
}

/// Every tick, a running guest yields to the scheduler (so one busy guest cannot starve
/// the others) and is stopped once `timeout` has passed since now.
fn arm_deadline(store: &mut Store<InvocationState>, timeout: Duration) {
    let started = Instant::now();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if started.elapsed() >= timeout {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

impl Runtime {
    fn new_store(
        &self,
        grants: &ServiceGrants,
        request: &RequestContext,
    ) -> Store<InvocationState> {
        let state = InvocationState::new(grants, request, &self.config.egress);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.granted.limiter);
        arm_deadline(&mut store, grants.timeout());
        store
    }

    /// Prepares a warm instance's store for another request: this request's grants,
    /// identity, trace context, an empty unit of work and a new deadline.
    fn renew(
        &self,
        store: &mut Store<InvocationState>,
        grants: &ServiceGrants,
        request: &RequestContext,
    ) {
        store.data_mut().renew(grants, request, &self.config.egress);
        arm_deadline(store, grants.timeout());
    }

    /// Bounds `work` by the invocation's timeout (plus a grace period for a guest that
    /// is blocked in the host). Dropping the future drops the store: nothing commits.
    async fn bounded<T>(
        timeout: Duration,
        work: impl Future<Output = Result<T, InvokeError>>,
    ) -> Result<T, InvokeError> {
        tokio::time::timeout(timeout + TIMEOUT_GRACE, work)
            .await
            .unwrap_or(Err(InvokeError::Timeout(timeout)))
    }

    /// Runs `request` through the component's `wasi:http/incoming-handler`. Returns the
    /// response and the invocation's effects, which the caller commits (or not).
    pub(crate) async fn handle_http(
        &self,
        prepared: &Prepared,
        grants: &ServiceGrants,
        cx: &RequestContext,
        request: http::Request<Bytes>,
    ) -> Result<(http::Response<Bytes>, UnitOfWork), InvokeError> {
        let timeout = grants.timeout();
        let reuse = grants.limits.instance_reuse;
        // A warm instance when the service allows reuse and one is idle; else a fresh one.
        let (store, warm) = match prepared.warm.take().filter(|_| reuse > 1) {
            Some(mut warm) => {
                self.renew(&mut warm.store, grants, cx);
                (warm.store, Some((warm.proxy, warm.served)))
            }
            None => (self.new_store(grants, cx), None),
        };
        let served = warm.as_ref().map_or(0, |(_, served)| *served) + 1;
        let (response, unit, instance) = Self::bounded(
            timeout,
            self.run_http(
                prepared,
                store,
                warm.map(|(proxy, _)| proxy),
                request,
                grants,
            ),
        )
        .await?;
        // A clean finish returns the instance to the pool, up to `reuse` requests.
        if let Some((store, proxy)) = instance
            && served < reuse
        {
            prepared.warm.put(Warm {
                store,
                proxy,
                served,
            });
        }
        Ok((response, unit))
    }

    /// Delivers `event` to the component's `microhost:platform/subscriber`. Returns the
    /// invocation's effects when the handler acknowledged the event.
    pub(crate) async fn handle_event(
        &self,
        prepared: &Prepared,
        grants: &ServiceGrants,
        cx: &RequestContext,
        event: &Envelope,
        attempt: u32,
    ) -> Result<UnitOfWork, InvokeError> {
        let pre = prepared
            .subscriber
            .clone()
            .ok_or(InvokeError::NotASubscriber)?;
        let timeout = grants.timeout();
        let mut store = self.new_store(grants, cx);
        let event = WitEvent {
            id: event.id.clone(),
            source: event.source.clone(),
            topic: event.topic.clone(),
            time: event.time.clone(),
            offset: event.offset,
            key: event.key.clone(),
            content_type: event.datacontenttype.clone(),
            traceparent: event.traceparent.clone(),
            data: event.data.clone(),
            attempt,
        };
        Self::bounded(timeout, async move {
            let bindings = pre
                .instantiate_async(&mut store)
                .await
                .map_err(InvokeError::instantiate)?;
            let result = bindings
                .microhost_platform_subscriber()
                .call_handle(&mut store, &event)
                .await
                .map_err(GuestFailure::Call);
            check_guest(result, &store, grants)?.map_err(InvokeError::Rejected)?;
            Ok(store.into_data().granted.unit)
        })
        .await
    }

    /// Asks the component's `microhost:platform/lifecycle.health`: `Ok(Err(why))` is an
    /// unhealthy answer, `Err` a failed call (trap, timeout). A component without the
    /// export is healthy. The invocation's effects are dropped.
    pub(crate) async fn check_health(
        &self,
        prepared: &Prepared,
        grants: &ServiceGrants,
        cx: &RequestContext,
    ) -> Result<Result<(), String>, InvokeError> {
        let Some((pre, index)) = prepared.health.clone() else {
            return Ok(Ok(()));
        };
        let timeout = grants.timeout();
        let mut store = self.new_store(grants, cx);
        Self::bounded(timeout, async move {
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(InvokeError::instantiate)?;
            let health = instance
                .get_typed_func::<(), (Result<(), String>,)>(&mut store, &index)
                .map_err(InvokeError::instantiate)?;
            let result = health
                .call_async(&mut store, ())
                .await
                .map(|(verdict,)| verdict)
                .map_err(GuestFailure::Call);
            check_guest(result, &store, grants)
        })
        .await
    }

    async fn run_http(
        &self,
        prepared: &Prepared,
        mut store: Store<InvocationState>,
        warm: Option<Proxy>,
        request: http::Request<Bytes>,
        grants: &ServiceGrants,
    ) -> Result<
        (
            http::Response<Bytes>,
            UnitOfWork,
            Option<(Store<InvocationState>, Proxy)>,
        ),
        InvokeError,
    > {
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request.map(Full::new))
            .map_err(InvokeError::instantiate)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(InvokeError::instantiate)?;

        let pre = prepared.pre.clone();
        let guest = async move {
            let proxy = match warm {
                Some(proxy) => proxy,
                None => match pre.instantiate_async(&mut store).await {
                    Ok(proxy) => proxy,
                    Err(e) => return (Err(GuestFailure::Instantiate(e)), store, None),
                },
            };
            let result = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
                .map_err(GuestFailure::Call);
            (result, store, Some(proxy))
        };
        let mut guest = std::pin::pin!(guest);

        // Wait for the response head, or for the guest to end without one.
        let mut finished: Option<GuestOutcome<()>> = None;
        let head = tokio::select! {
            head = &mut receiver => head.ok(),
            outcome = &mut guest => {
                finished = Some(outcome);
                receiver.try_recv().ok()
            }
        };

        let (parts, body) = match head {
            Some(Ok(response)) => {
                let (parts, body) = response.into_parts();
                let collect = crate::body::collect(body, MAX_RESPONSE_BYTES);
                // The guest may still be writing the body: drive both.
                let body = match finished {
                    Some(_) => collect.await,
                    None => {
                        let (body, outcome) = tokio::join!(collect, &mut guest);
                        finished = Some(outcome);
                        body
                    }
                };
                (Some(parts), body)
            }
            Some(Err(code)) => {
                let (result, store, _) = match finished {
                    Some(outcome) => outcome,
                    None => guest.await,
                };
                check_guest(result, &store, grants)?;
                return Err(InvokeError::ErrorResponse(describe_error_code(&code)));
            }
            None => (None, Ok(Bytes::new())),
        };

        let (result, mut store, proxy) = match finished {
            Some(outcome) => outcome,
            None => guest.await,
        };
        check_guest(result, &store, grants)?;
        let Some(parts) = parts else {
            return Err(InvokeError::NoResponse);
        };
        // wasi:http takes any three digits; HTTP has 100 to 599, and no client may get
        // another (RFC 9110, 15).
        if parts.status.as_u16() >= 600 {
            return Err(InvokeError::InvalidStatus(parts.status.as_u16()));
        }
        let body = body.map_err(|e| match e {
            BodyError::TooLarge(_) => InvokeError::ResponseTooLarge,
            BodyError::Failed(e) => {
                InvokeError::ErrorResponse(format!("the response body failed: {e}"))
            }
        })?;
        let unit = store.data_mut().take_unit();
        Ok((
            http::Response::from_parts(parts, body),
            unit,
            proxy.map(|proxy| (store, proxy)),
        ))
    }
}

/// Classifies a failed guest call: deadline, memory limit, or any other trap.
fn check_guest<T>(
    result: Result<T, GuestFailure>,
    store: &Store<InvocationState>,
    grants: &ServiceGrants,
) -> Result<T, InvokeError> {
    let e = match result {
        Ok(value) => return Ok(value),
        Err(GuestFailure::Instantiate(e)) => {
            return Err(InvokeError::instantiate(e));
        }
        Err(GuestFailure::Call(e)) => e,
    };
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return Err(InvokeError::Timeout(grants.timeout()));
    }
    if store.data().granted.limiter.hit {
        return Err(InvokeError::MemoryLimit(grants.memory_bytes()));
    }
    // The WASI constructors that ran into the resource table's cap have no error case
    // to report it in: they trap, and the trap is told for what it is.
    if e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        )
    }) {
        return Err(InvokeError::Trap(format!(
            "the service held more than {} host resources open at once (its `limits.resources`)",
            grants.limits.resources
        )));
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return Err(InvokeError::Trap(trap.to_string()));
    }
    Err(InvokeError::Trap(format!("{e:#}")))
}

fn describe_error_code(code: &ErrorCode) -> String {
    format!("{code:?}")
}
