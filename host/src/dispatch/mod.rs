//! The one path for every call into a service, from the edge, from another service or
//! from the bus: pin the active version for the whole call, invoke it, and commit the
//! invocation's unit of work when it succeeded. HTTP calls, from the edge and from
//! other services alike, first pass the service's policies ([`Dispatcher::serve`]):
//! response cache, concurrency limit, circuit breaker, retries and fallback.

pub(crate) mod delivery;
pub(crate) mod idempotency;
pub(crate) mod queue;
pub(crate) mod stored;

use crate::auth::Identity;
use crate::bus::unit::Ack;
use crate::bus::{Bus, Item};
use crate::capability::RequestContext;
use crate::capability::outgoing::ServiceCaller;
use crate::config::FallbackSpec;
use crate::headers::{
    CACHE_HEADER, CALLER_HEADER, CLAIMS_HEADER, FALLBACK_HEADER, HOPS_HEADER, REQUEST_ID_HEADER,
    SERVICE_HEADER, SUBJECT_HEADER, TRACEPARENT_HEADER,
};
use crate::metrics::Metrics;
use crate::outcome::{Class, DispatchError, classify};
use crate::policy::breaker::Breakers;
use crate::policy::{self, Cache, CacheControl};
use crate::problem::problem_bytes;
use crate::registry::{Registry, RegistryParts, ServiceSlot};
use crate::runtime::Runtime;
use crate::store::{Entry, StoreError};
use crate::telemetry::Tracer;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use opentelemetry::trace::SpanKind;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// How often a request whose commit conflicted is run again before giving up.
pub(crate) const MAX_CONFLICT_RETRIES: u32 = 8;

/// The result of one HTTP call, with the version that handled it.
pub(crate) struct Outcome {
    pub(crate) version: String,
    pub(crate) result: Result<http::Response<Bytes>, DispatchError>,
}

impl Outcome {
    /// What the outcome is (see [`crate::outcome`]).
    pub(crate) fn class(&self) -> Class {
        classify(&self.result)
    }

    /// The status the response will have.
    pub(crate) fn status(&self) -> StatusCode {
        match &self.result {
            Ok(response) => response.status(),
            Err(error) => error.status(),
        }
    }

    /// The response to send: the service's, or a problem body saying what failed;
    /// either way tagged `x-microhost-service: name@version`.
    pub(crate) fn into_response(self, service: &str) -> http::Response<Bytes> {
        let mut response = match self.result {
            Ok(response) => response,
            Err(error) => {
                let status = error.status();
                tracing::warn!(service, version = %self.version, %status, error = %error, "invocation failed");
                let mut extra = serde_json::Map::new();
                extra.insert("service".into(), service.into());
                extra.insert("version".into(), self.version.clone().into());
                let mut response =
                    problem_bytes(status, format!("service {service:?}: {error}"), extra);
                if let Some(secs) = error.retry_after() {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                response
            }
        };
        if let Ok(tag) = HeaderValue::from_str(&format!("{service}@{}", self.version)) {
            response.headers_mut().insert(SERVICE_HEADER, tag);
        }
        response
    }
}

/// Whether a failed call goes to the route's fallback service: any call the service
/// never got (breaker open, shed, unhealthy), and an idempotent one that failed in a way
/// another attempt may mend.
fn falls_back_to_service(outcome: &Outcome, method: &Method) -> bool {
    match &outcome.result {
        Err(
            DispatchError::BreakerOpen(_)
            | DispatchError::Overloaded(_)
            | DispatchError::Unhealthy(_),
        ) => true,
        _ => method.is_idempotent() && outcome.class().retriable(),
    }
}

/// What a call commits with its effects besides them: the acknowledgement of a queued
/// request and the host write `record` makes of the response (given with the version
/// that answered it).
pub(crate) struct Finish<'a> {
    pub(crate) ack: &'a Ack,
    pub(crate) record: &'a (dyn Fn(&http::Response<Bytes>, &str) -> Entry + Sync),
}

/// How often expired idempotency answers and queued results are deleted.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Deletes expired idempotency answers and queued requests' results every
/// [`SWEEP_EVERY`] until `stop` turns true.
pub(crate) fn spawn_sweeper(
    bus: Arc<Bus>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            for (what, swept) in [
                ("idempotency answers", idempotency::sweep(&bus).await),
                ("queued requests' results", queue::sweep(&bus).await),
            ] {
                match swept {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "expired {what} deleted"),
                    Err(e) => tracing::warn!(error = %e, "deleting expired {what} failed"),
                }
            }
        }
    })
}

/// Why an event delivery did not take.
#[derive(Debug)]
pub(crate) enum DeliveryError {
    /// The handler failed (error, trap, timeout): retry, counting the attempt.
    Failed(String),
    /// The host could not run it or save its effects (storage, no free instance): retry
    /// later without counting an attempt against the event, which is not at fault.
    Host(String),
    /// The item is no longer the subscription's to acknowledge (replayed, or already
    /// acknowledged): nothing was committed; look at the subscription again.
    Conflict(String),
}

/// Calls services.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<Runtime>,
    bus: Arc<Bus>,
    registry: Arc<Registry>,
    breakers: Arc<Breakers>,
    metrics: Arc<Metrics>,
    /// This dispatcher as the server of guests' service-to-service calls (a weak
    /// handle: the dispatcher must not keep itself alive).
    as_caller: Arc<dyn ServiceCaller>,
    /// Idempotency keys whose requests are running now.
    idempotent: Arc<idempotency::Running>,
    /// Opens the spans of dispatch, invocations, commits and deliveries.
    tracer: Tracer,
}

/// The identity the gateway (or a calling service's host side) put on the request.
/// Only the host sets these headers: the gateway strips them from edge requests.
fn identity_of(headers: &http::HeaderMap) -> Option<Identity> {
    // UTF-8, not only visible ASCII: subjects and claims may be any text.
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    };
    let subject = text(SUBJECT_HEADER)?.to_string();
    let claims = text(CLAIMS_HEADER)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    Some(Identity { subject, claims })
}

/// Whose cached answers a request may share: the verified token's issuer and subject,
/// and the calling service. `None` when the shared cache must not be used: the request
/// carries credentials the host did not verify (cookies, another `Authorization`).
fn cache_owner(headers: &http::HeaderMap) -> Option<String> {
    let identity = identity_of(headers);
    if headers.contains_key(header::COOKIE)
        || (headers.contains_key(header::AUTHORIZATION) && identity.is_none())
    {
        return None;
    }
    let caller = headers
        .get(CALLER_HEADER)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .unwrap_or("");
    Some(match identity {
        Some(identity) => format!("{caller}\n{}", identity.key()),
        None => format!("{caller}\n\n"),
    })
}

impl Dispatcher {
    /// The dispatcher and the registry it routes through, made together: the registry's
    /// health checks make their service calls through this dispatcher. Returns the
    /// receiver of slots that start serving at runtime (see [`Registry::new`]).
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        bus: Arc<Bus>,
        tracer: Tracer,
        registry: RegistryParts,
    ) -> (Dispatcher, UnboundedReceiver<Arc<ServiceSlot>>) {
        let mut started = None;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let caller: Arc<dyn ServiceCaller> = Arc::new(WeakCaller(weak.clone()));
            let (registry, receiver) = Registry::new(registry, caller.clone());
            started = Some(receiver);
            let registry = Arc::new(registry);
            let breakers = Arc::new(Breakers::default());
            let mut metrics = Metrics::new();
            metrics.observe(&breakers, &registry, &bus);
            Inner {
                runtime,
                bus,
                registry,
                breakers,
                metrics: Arc::new(metrics),
                as_caller: caller,
                idempotent: Arc::default(),
                tracer,
            }
        });
        let started = started.expect("new_cyclic runs its closure once");
        (Dispatcher { inner }, started)
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// `GET /healthz` (gateway and admin): 200 while the host serves state; 503 with the
    /// reason once the store stopped after a failed flush.
    pub(crate) fn health(&self) -> http::Response<Bytes> {
        match self.inner.bus.stopped() {
            None => {
                let mut response = http::Response::new(Bytes::from_static(b"{\"status\":\"ok\"}"));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            Some(why) => {
                let mut extra = serde_json::Map::new();
                extra.insert("store".into(), "stopped".into());
                extra.insert("reason".into(), why.clone().into());
                problem_bytes(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the store stopped after a failed flush ({why}): it accepts no reads or \
                         writes; restart the host"
                    ),
                    extra,
                )
            }
        }
    }

    /// `GET /readyz` (gateway and admin): 200 when the host can serve every service: the
    /// store is open (no fail-stop) and each service's active version passes its health
    /// checks; else 503 naming what is not ready. (Kubernetes: a readiness probe; the
    /// liveness probe is `/healthz`, which fails only when a restart is the cure.)
    pub(crate) fn readiness(&self) -> http::Response<Bytes> {
        let stopped = self.health();
        if !stopped.status().is_success() {
            return stopped;
        }
        let mut services = self.inner.registry.services();
        services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        let unready: Vec<String> = services
            .iter()
            .filter(|slot| !slot.is_healthy())
            .map(|slot| format!("{}@{}", slot.spec.name, slot.active().label))
            .collect();
        if unready.is_empty() {
            let body = serde_json::json!({ "status": "ready", "services": services.len() });
            let mut response = http::Response::new(Bytes::from(body.to_string()));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return response;
        }
        let mut extra = serde_json::Map::new();
        extra.insert("unready".into(), unready.clone().into());
        problem_bytes(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {} failing {} health checks",
                unready.join(", "),
                if unready.len() == 1 { "its" } else { "their" }
            ),
            extra,
        )
    }

    /// A handle that does not keep the dispatcher alive (for what the registry holds).
    pub(crate) fn downgrade(&self) -> WeakDispatcher {
        WeakDispatcher(Arc::downgrade(&self.inner))
    }

    pub(crate) fn tracer(&self) -> &Tracer {
        &self.inner.tracer
    }

    pub(crate) fn breakers(&self) -> &Breakers {
        &self.inner.breakers
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Runs the request (`parts`, `body`) on the version of `slot` that is active now. A
    /// deploy during the call does not affect it: the pinned version stays alive until
    /// the call ends.
    /// The invocation's writes and events commit only if it answers below 500. If what
    /// it read changed before it could commit (a concurrent invocation wrote it), it is
    /// run again from the start, on fresh state, up to [`MAX_CONFLICT_RETRIES`] times.
    pub(crate) async fn call(
        &self,
        slot: &ServiceSlot,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Outcome {
        self.call_with(slot, parts, body, None).await
    }

    /// [`Dispatcher::call`], committing `finish` with the effects.
    pub(crate) async fn call_with(
        &self,
        slot: &ServiceSlot,
        parts: &http::request::Parts,
        body: &Bytes,
        finish: Option<&Finish<'_>>,
    ) -> Outcome {
        if !slot.is_healthy() {
            let health = slot.health();
            return Outcome {
                version: slot.active().label.clone(),
                result: Err(DispatchError::Unhealthy(health.reason.unwrap_or_default())),
            };
        }
        let identity = identity_of(&parts.headers);
        let claim = match idempotency::begin(
            &self.inner.bus,
            &self.inner.idempotent,
            slot.name(),
            slot.spec.policy.idempotency.ttl_secs,
            identity.as_ref().map(|id| id.subject.as_str()),
            parts,
            body,
        )
        .await
        {
            idempotency::Verdict::Run => None,
            idempotency::Verdict::Claimed(claim) => Some(claim),
            idempotency::Verdict::Answer(response) => {
                return Outcome {
                    version: slot.active().label.clone(),
                    result: Ok(response),
                };
            }
            idempotency::Verdict::Failed(why) => {
                return Outcome {
                    version: slot.active().label.clone(),
                    result: Err(DispatchError::Storage(why)),
                };
            }
        };
        let pinned = slot.pin();
        let version = pinned.version().label.clone();
        let headers = &parts.headers;
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let parent = text(TRACEPARENT_HEADER);
        let mut cx = RequestContext {
            version: version.clone(),
            traceparent: parent.map(str::to_string),
            request_id: text(REQUEST_ID_HEADER).map(str::to_string),
            identity,
            hops: text(HOPS_HEADER).and_then(|v| v.parse().ok()).unwrap_or(0),
            caller: Some(self.inner.as_caller.clone()),
            tracer: self.inner.tracer.clone(),
        };
        let mut retries = 0;
        let result = loop {
            let mut request = http::Request::new(body.clone());
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            let mut invoke = self.invoke_span(slot.name(), &version, parent);
            cx.traceparent = invoke.traceparent().map(str::to_string);
            // The guest sees its invocation's span as the parent of whatever it traces.
            if invoke.is_recording()
                && let Some(value) = invoke
                    .traceparent()
                    .and_then(|tp| HeaderValue::from_str(tp).ok())
            {
                request.headers_mut().insert(TRACEPARENT_HEADER, value);
            }
            let result = self
                .inner
                .runtime
                .handle_http(&pinned.version().prepared, &slot.grants, &cx, request)
                .await;
            let (response, mut unit) = match result {
                Ok(done) => done,
                Err(e) => {
                    invoke.fail(e.to_string());
                    break Err(DispatchError::Invoke(e));
                }
            };
            invoke.status(response.status().as_u16());
            drop(invoke);
            if !Class::of_status(response.status()).commits() {
                break match self.inner.bus.settle(&unit).await {
                    Ok(()) => Ok(response),
                    Err(e) => Err(DispatchError::Storage(e.to_string())),
                };
            }
            if let Some(claim) = &claim {
                claim.record(&response, &mut unit);
            }
            if let Some(finish) = finish {
                unit.host.push((finish.record)(&response, &version));
            }
            match self.commit(parent, &unit, finish.map(|f| f.ack)).await {
                Ok(_) => break Ok(response),
                Err(StoreError::Conflict(why)) if retries < MAX_CONFLICT_RETRIES => {
                    retries += 1;
                    tracing::debug!(service = %slot.name(), retries, why, "conflicting commit; running the request again");
                }
                Err(StoreError::Conflict(why)) => {
                    break Err(DispatchError::Contention(format!(
                        "{why} ({} attempts)",
                        retries + 1
                    )));
                }
                Err(e) => break Err(DispatchError::Storage(e.to_string())),
            }
        };
        pinned.version().record(classify(&result));
        Outcome { version, result }
    }

    /// The span of one invocation of `service@version`, under `parent`.
    fn invoke_span(
        &self,
        service: &str,
        version: &str,
        parent: Option<&str>,
    ) -> crate::telemetry::Span {
        let mut span =
            self.inner
                .tracer
                .child(|| format!("invoke {service}"), SpanKind::Internal, parent);
        if span.is_recording() {
            span.set("microhost.service", service.to_string());
            span.set("microhost.version", version.to_string());
        }
        span
    }

    /// [`Bus::commit`] in a span (under `parent`) saying what it wrote.
    async fn commit(
        &self,
        parent: Option<&str>,
        unit: &crate::bus::unit::UnitOfWork,
        ack: Option<&crate::bus::unit::Ack>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut span = self
            .inner
            .tracer
            .child(|| "commit", SpanKind::Internal, parent);
        if span.is_recording() {
            span.set("microhost.service", unit.service.clone());
            span.set("microhost.kv.writes", unit.kv.len() as i64);
            span.set("microhost.kv.reads", unit.reads.len() as i64);
            span.set("microhost.events", unit.events.len() as i64);
            span.set("microhost.acknowledges", ack.is_some());
        }
        let committed = self.inner.bus.commit(unit, ack).await;
        if let Err(e) = &committed {
            span.fail(e.to_string());
        }
        committed
    }

    /// A service-to-service call: the callee's own rules first, as at the edge (a token
    /// on its protected routes, its body limit), then its policies ([`Dispatcher::serve`]).
    /// Always an HTTP response (problem bodies for failures).
    pub(crate) async fn call_service(
        &self,
        target: &str,
        request: http::Request<Bytes>,
    ) -> http::Response<Bytes> {
        let Some(slot) = self.inner.registry.get(target) else {
            return problem_bytes(
                StatusCode::NOT_FOUND,
                format!("there is no service {target:?}"),
                serde_json::Map::new(),
            );
        };
        let fields = || {
            let mut fields = serde_json::Map::new();
            fields.insert("service".into(), target.into());
            fields
        };
        let (method, path) = (request.method().as_str(), request.uri().path());
        if slot.requires_token(method, path) && identity_of(request.headers()).is_none() {
            return problem_bytes(
                StatusCode::UNAUTHORIZED,
                format!(
                    "{method} {path} of service {target:?} needs a verified token, and the \
                     request that made this call carried none"
                ),
                fields(),
            );
        }
        let max_body = slot.spec.limits.max_body_kib.saturating_mul(1024);
        if request.body().len() as u64 > max_body {
            return problem_bytes(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than the limit of {max_body} bytes for service {target:?}"
                ),
                fields(),
            );
        }
        self.serve(&slot, request).await.0
    }

    /// Serves an HTTP request to `slot` through its policies: a fresh cached response
    /// if there is one (`GET`); else a turn under the concurrency limit, the circuit
    /// breaker, the call (retried for idempotent methods on 502/503/504, within the
    /// retry budget), and the fallback if it still failed (`GET`/`HEAD`). Returns the
    /// response (tagged with the service and version) and the version.
    pub(crate) async fn serve(
        &self,
        slot: &ServiceSlot,
        request: http::Request<Bytes>,
    ) -> (http::Response<Bytes>, String) {
        let (mut parts, body) = request.into_parts();
        let parent = parts
            .headers
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut span = self.inner.tracer.child(
            || format!("dispatch {}", slot.name()),
            SpanKind::Internal,
            parent.as_deref(),
        );
        if span.is_recording() {
            if let Some(value) = span
                .traceparent()
                .and_then(|tp| HeaderValue::from_str(tp).ok())
            {
                parts.headers.insert(TRACEPARENT_HEADER, value);
            }
            span.set("microhost.service", slot.name().to_string());
        }
        let (response, version) = self
            .serve_in(slot, http::Request::from_parts(parts, body), &mut span)
            .await;
        if span.is_recording() {
            span.set("microhost.version", version.clone());
            span.set("microhost.canary", version != slot.active().label);
            if let Some(kind) = response
                .headers()
                .get(FALLBACK_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                span.set("microhost.fallback", kind.to_string());
            }
            span.status(response.status().as_u16());
        }
        (response, version)
    }

    /// [`Dispatcher::serve`], noting its decisions on `span`.
    async fn serve_in(
        &self,
        slot: &ServiceSlot,
        request: http::Request<Bytes>,
        span: &mut crate::telemetry::Span,
    ) -> (http::Response<Bytes>, String) {
        let started = Instant::now();
        let name = slot.name();
        let policy = &slot.policy;
        let metrics = &self.inner.metrics;
        let breakers = &self.inner.breakers;
        let _in_flight = crate::metrics::InFlightGuard::new(
            policy
                .in_flight
                .get_or_init(|| metrics.in_flight_gauge(name)),
        );
        let (parts, body) = request.into_parts();
        let method = parts.method.clone();
        let active = slot.active().label.clone();
        let cache = policy
            .cache
            .as_ref()
            .filter(|_| method == Method::GET)
            .and_then(|cache| Some((cache, Cache::key(&cache_owner(&parts.headers)?, &parts.uri))));
        // What the client asked of caches (only read when the route caches).
        let asked = match cache {
            Some(_) => CacheControl::parse(&parts.headers),
            None => CacheControl::default(),
        };
        if let Some((cache, key)) = &cache
            && !asked.no_cache
            && !asked.no_store
        {
            if let Some(mut response) = cache.get(&active, key, false) {
                metrics.cache(name, "hit");
                span.set("microhost.cache", "hit");
                response
                    .headers_mut()
                    .insert(CACHE_HEADER, HeaderValue::from_static("HIT"));
                let response = Outcome {
                    version: active.clone(),
                    result: Ok(response),
                }
                .into_response(name);
                metrics.request(name, &active, response.status().as_u16(), started.elapsed());
                return (response, active);
            }
            metrics.cache(name, "miss");
            span.set("microhost.cache", "miss");
        }

        let outcome = 'call: {
            let _permit = match &policy.concurrency {
                None => None,
                Some(shedder) => match shedder.enter().await {
                    Ok(permit) => Some(permit),
                    Err(shed) => {
                        metrics.shed(name);
                        let why = match shed {
                            policy::Shed::QueueFull => format!(
                                "{} requests running and {} waiting",
                                shedder.spec.max, shedder.spec.queue
                            ),
                            policy::Shed::QueueTimeout => format!(
                                "no turn within {} ms in the queue",
                                shedder.spec.queue_timeout_ms
                            ),
                        };
                        break 'call Outcome {
                            version: active.clone(),
                            result: Err(DispatchError::Overloaded(why)),
                        };
                    }
                },
            };
            let probe_timeout = Duration::from_millis(slot.spec.limits.timeout_ms);
            if !breakers.allow(name, probe_timeout) {
                span.set("microhost.breaker", "open");
                break 'call Outcome {
                    version: active.clone(),
                    result: Err(DispatchError::BreakerOpen(Duration::from_millis(
                        slot.spec.breaker.open_ms,
                    ))),
                };
            }
            if policy.spec.retry.attempts > 1 {
                policy.budget.deposit();
            }
            let attempts = policy.attempts(&method);
            let mut attempt = 1;
            loop {
                let outcome = self.call(slot, &parts, &body).await;
                let status = outcome.status();
                let class = outcome.class();
                // A canary's failures are judged by its canary analysis (and rolled
                // back), not held against the service's breaker.
                match class.failed() {
                    Some(true) if outcome.version != active => {}
                    Some(failed) => breakers.record(name, &slot.spec.breaker, !failed),
                    None => {}
                }
                if !class.retriable()
                    || attempt >= attempts
                    || !breakers.allow(name, probe_timeout)
                    || !policy.budget.withdraw()
                {
                    span.set("microhost.retries", i64::from(attempt - 1));
                    break 'call outcome;
                }
                metrics.retried(name);
                tracing::debug!(service = name, attempt, %status, "retrying");
                tokio::time::sleep(policy.backoff(attempt)).await;
                attempt += 1;
            }
        };

        let version = outcome.version.clone();
        // Every answer from here is counted once, under the version that was called.
        let counted = |response: http::Response<Bytes>| {
            metrics.request(
                name,
                &version,
                response.status().as_u16(),
                started.elapsed(),
            );
            (response, version.clone())
        };
        if let FallbackSpec::Queue { max_queued, .. } = &policy.spec.fallback
            && queue::takes(&outcome, &parts)
            && let Some(response) = self.enqueue(slot, *max_queued, &parts, &body).await
        {
            return counted(response);
        }
        if let FallbackSpec::Service { service: other } = &policy.spec.fallback
            && falls_back_to_service(&outcome, &method)
            && let Some(other) = self.inner.registry.get(other)
        {
            let mut request = http::Request::new(body);
            *request.method_mut() = parts.method;
            *request.uri_mut() = parts.uri;
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers;
            let (mut response, _) = self.serve_fallback(&other, request).await;
            metrics.fallback(name, "service");
            response
                .headers_mut()
                .insert(FALLBACK_HEADER, HeaderValue::from_static("service"));
            return counted(response);
        }
        let response = if !outcome.class().commits()
            && (method == Method::GET || method == Method::HEAD)
            && let Some(fallback) =
                self.fallback(slot, &active, cache.as_ref().map(|(_, k)| k.as_str()))
        {
            fallback
        } else {
            let mut response = outcome.into_response(name);
            if let Some((cache, key)) = &cache {
                // Only the active version's answers are kept (not a canary's).
                if !asked.no_store && version == slot.active().label {
                    cache.store(&version, key, parts.uri.path(), &response);
                }
                response
                    .headers_mut()
                    .insert(CACHE_HEADER, HeaderValue::from_static("MISS"));
            }
            // A write through the route makes what was cached for its path stale.
            if let Some(cache) = &policy.cache
                && matches!(
                    method,
                    Method::POST | Method::PUT | Method::PATCH | Method::DELETE
                )
                && Class::of_status(response.status()).commits()
            {
                cache.invalidate_path(parts.uri.path());
            }
            response
        };
        counted(response)
    }

    /// [`Dispatcher::serve`] for a fallback service, boxed: `serve` calls it (once: a
    /// fallback service's own fallback is never a service).
    fn serve_fallback<'a>(
        &'a self,
        slot: &'a ServiceSlot,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = (http::Response<Bytes>, String)> + Send + 'a>> {
        Box::pin(self.serve(slot, request))
    }

    /// The route's fallback for a request that failed, if it has one to give (`problem`,
    /// `cached`, `static`; a `service` fallback is served in [`Dispatcher::serve`]).
    fn fallback(
        &self,
        slot: &ServiceSlot,
        active: &str,
        cache_key: Option<&str>,
    ) -> Option<http::Response<Bytes>> {
        let name = slot.name();
        let (mut response, kind) = match &slot.policy.spec.fallback {
            FallbackSpec::Problem | FallbackSpec::Service { .. } | FallbackSpec::Queue { .. } => {
                return None;
            }
            FallbackSpec::Cached => {
                let mut response = slot.policy.cache.as_ref()?.get(active, cache_key?, true)?;
                response
                    .headers_mut()
                    .insert(CACHE_HEADER, HeaderValue::from_static("STALE"));
                self.inner.metrics.cache(name, "stale");
                (response, "cached")
            }
            FallbackSpec::Static {
                status,
                body,
                content_type,
            } => {
                let mut response = http::Response::new(Bytes::from(body.clone()));
                *response.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                if let Ok(v) = HeaderValue::from_str(content_type) {
                    response.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                (response, "static")
            }
        };
        self.inner.metrics.fallback(name, kind);
        response
            .headers_mut()
            .insert(FALLBACK_HEADER, HeaderValue::from_static(kind));
        // A cached answer says which version gave it (perhaps one before a bad deploy).
        let answered_by = response.headers().get(SERVICE_HEADER).cloned();
        let outcome = Outcome {
            version: active.to_string(),
            result: Ok(response),
        };
        let mut response = outcome.into_response(name);
        if let Some(tag) = answered_by {
            response.headers_mut().insert(SERVICE_HEADER, tag);
        }
        Some(response)
    }

    /// Delivers `item` to the active version of `slot`. On success the handler's
    /// effects and the acknowledgement commit together.
    pub(crate) async fn deliver(
        &self,
        slot: &ServiceSlot,
        item: &Item,
        attempt: u32,
    ) -> Result<(), DeliveryError> {
        let pinned = slot.pin();
        let version = pinned.version().label.clone();
        // A child of the publish (its context came with the event): one trace from the
        // request that published to every delivery it caused.
        let mut delivery = self.inner.tracer.child(
            || format!("deliver {}", item.event.topic),
            SpanKind::Consumer,
            item.event.traceparent.as_deref(),
        );
        if delivery.is_recording() {
            delivery.set("messaging.system", "microhost");
            delivery.set("messaging.destination.name", item.event.topic.clone());
            delivery.set("messaging.message.id", item.event.id.clone());
            delivery.set("messaging.consumer.group.name", slot.name().to_string());
            delivery.set("microhost.attempt", i64::from(attempt));
        }
        let mut invoke = self.invoke_span(slot.name(), &version, delivery.traceparent());
        let cx = RequestContext {
            traceparent: invoke.traceparent().map(str::to_string),
            caller: Some(self.inner.as_caller.clone()),
            tracer: self.inner.tracer.clone(),
            ..RequestContext::new(&version)
        };
        let outcome = self
            .inner
            .runtime
            .handle_event(
                &pinned.version().prepared,
                &slot.grants,
                &cx,
                &item.event,
                attempt,
            )
            .await;
        if let Err(e) = &outcome {
            invoke.fail(e.to_string());
        }
        drop(invoke);
        let result = match outcome {
            Ok(unit) => match self
                .commit(delivery.traceparent(), &unit, Some(&item.ack))
                .await
            {
                Ok(_) => Ok(()),
                Err(StoreError::Conflict(why)) => return Err(DeliveryError::Conflict(why)),
                Err(e) => Err(DispatchError::Storage(e.to_string())),
            },
            Err(e) => Err(DispatchError::Invoke(e)),
        };
        let class = match &result {
            Ok(()) => Class::Success,
            Err(e) => e.class(),
        };
        pinned.version().record(class);
        if let Err(e) = &result {
            delivery.fail(e.to_string());
        }
        result.map_err(|e| match class {
            Class::HostRefusal { .. } => DeliveryError::Host(format!("{version}: {e}")),
            _ => DeliveryError::Failed(format!("{version}: {e}")),
        })
    }
}

/// A dispatcher that may be gone.
#[derive(Clone)]
pub(crate) struct WeakDispatcher(Weak<Inner>);

impl WeakDispatcher {
    pub(crate) fn upgrade(&self) -> Option<Dispatcher> {
        self.0.upgrade().map(|inner| Dispatcher { inner })
    }
}

/// Serves guests' service-to-service calls without keeping the dispatcher alive.
struct WeakCaller(Weak<Inner>);

impl ServiceCaller for WeakCaller {
    fn call(
        &self,
        target: String,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = http::Response<Bytes>> + Send>> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            match inner {
                Some(inner) => Dispatcher { inner }.call_service(&target, request).await,
                None => problem_bytes(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the host is shutting down",
                    serde_json::Map::new(),
                ),
            }
        })
    }
}
