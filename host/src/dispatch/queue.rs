//! The `queue` fallback: a write from the edge that the service cannot take now (its
//! breaker is open, it sheds, it fails its health checks) is stored durably, answered
//! `202 Accepted` with a `Location` (`/_microhost/queue/{id}`), and replayed once the
//! service takes calls again: one at a time, in arrival order, through the breaker (a
//! replay is its probe) and the concurrency limit. A replay that commits removes the
//! request from the queue and stores its result in the same commit as its effects, so
//! each queued request takes effect exactly once, across crashes. A replay the service
//! fails (5xx) is tried again with backoff, up to the fallback's `max_attempts`; then
//! that failure is the result (with no effects, as any 5xx). A refusal of the host
//! (breaker open again, shed, unhealthy) waits without counting.
//!
//! The result (status, headers, body) stays at the `Location` for `keep_secs`; while the
//! request waits, the `Location` answers `202` with `Retry-After`. A request queued with
//! an `Idempotency-Key` stores the `202` as the key's answer: a retry gets the same
//! `Location` instead of queuing twice. The caller a token identified is the only one
//! the `Location` answers.

use super::delivery::pause;
use super::stored::StoredResponse;
use super::{Dispatcher, Finish, Outcome, idempotency};
use crate::bus::Bus;
use crate::bus::unit::{Ack, UnitOfWork};
use crate::config::FallbackSpec;
use crate::headers::{CALLER_HEADER, FALLBACK_HEADER, SUBJECT_HEADER};
use crate::outcome::{Class, DispatchError};
use crate::problem::problem_bytes;
use crate::registry::ServiceSlot;
use crate::store::{StoreError, keys};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the gateway answers for queued requests: `{PATH_PREFIX}{id}`.
pub(crate) const PATH_PREFIX: &str = "/_microhost/queue/";

/// How long the replay loop first waits while the service takes no calls (doubling
/// up to [`MAX_WAIT`]).
const WAIT: Duration = Duration::from_millis(200);
const MAX_WAIT: Duration = Duration::from_secs(5);

/// A queued request, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Queued {
    id: String,
    method: String,
    uri: String,
    /// Name and base64 value (values need not be text).
    headers: Vec<(String, String)>,
    /// Base64.
    body: String,
}

/// Where a queued request stands.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    service: String,
    /// The verified subject of the request's token: the only caller the `Location`
    /// answers (`None`: anyone holding the id).
    subject: Option<String>,
    queued_at: String,
    /// Once replayed: the result, and until when it is kept.
    #[serde(default)]
    result: Option<Finished>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Finished {
    #[serde(flatten)]
    response: StoredResponse,
    finished_at: String,
    attempts: u32,
    expires_ms: u64,
}

/// The name the replay loop of `service` watches for new requests.
fn signal(service: &str) -> String {
    format!("\0queue\0{service}")
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Whether the request goes to the queue: a write from the edge (not another service's
/// call) that the service never got
/// (or that it answered `503` itself: it cannot serve now, say because a service it
/// calls is down; its invocation committed nothing).
pub(crate) fn takes(outcome: &Outcome, parts: &http::request::Parts) -> bool {
    matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && !parts.headers.contains_key(CALLER_HEADER)
        && match &outcome.result {
            Err(
                DispatchError::BreakerOpen(_)
                | DispatchError::Overloaded(_)
                | DispatchError::Unhealthy(_),
            ) => true,
            Ok(response) => response.status() == StatusCode::SERVICE_UNAVAILABLE,
            Err(_) => false,
        }
}

fn location(id: &str) -> String {
    format!("{PATH_PREFIX}{id}")
}

/// The `202` for a request that waits in the queue.
fn accepted(service: &str, id: &str, queued_at: &str, retry_after: u64) -> http::Response<Bytes> {
    let body = serde_json::json!({
        "status": "queued",
        "id": id,
        "service": service,
        "queued_at": queued_at,
        "location": location(id),
    });
    let mut response = http::Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = HeaderValue::from_str(&location(id)) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
    headers.insert(FALLBACK_HEADER, HeaderValue::from_static("queue"));
    response
}

fn not_found(id: &str) -> http::Response<Bytes> {
    problem_bytes(
        StatusCode::NOT_FOUND,
        format!(
            "there is no queued request {id:?} for this caller (never queued, or its result \
             expired)"
        ),
        serde_json::Map::new(),
    )
}

impl Queued {
    fn of(id: &str, parts: &http::request::Parts, body: &Bytes) -> Queued {
        Queued {
            id: id.to_string(),
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            // The identity the gateway verified goes along (as its headers); the token
            // it came from is not kept at rest.
            headers: parts
                .headers
                .iter()
                .filter(|(name, _)| {
                    name.as_str() != idempotency::HEADER
                        && !(*name == header::AUTHORIZATION
                            && parts.headers.contains_key(SUBJECT_HEADER))
                })
                .map(|(name, value)| (name.to_string(), b64().encode(value.as_bytes())))
                .collect(),
            body: b64().encode(body),
        }
    }

    fn request(&self) -> Result<(http::request::Parts, Bytes), String> {
        let mut request = http::Request::new(());
        *request.method_mut() = Method::from_bytes(self.method.as_bytes())
            .map_err(|e| format!("method {:?}: {e}", self.method))?;
        *request.uri_mut() = self
            .uri
            .parse()
            .map_err(|e| format!("uri {:?}: {e}", self.uri))?;
        for (name, value) in &self.headers {
            let value = b64()
                .decode(value)
                .map_err(|e| format!("header {name}: {e}"))?;
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                request.headers_mut().append(name, value);
            }
        }
        let body = b64().decode(&self.body).map_err(|e| format!("body: {e}"))?;
        Ok((request.into_parts().0, Bytes::from(body)))
    }
}

/// What one replay came to.
enum Replay {
    /// It has its result.
    Done,
    /// The service takes no calls now: the same request later, not counted.
    Wait,
    /// The service failed it: count the attempt, back off, try again.
    Failed,
}

impl Dispatcher {
    /// Stores the request in `slot`'s queue and answers `202`; `None` when the queue is
    /// full (the caller answers as it would have without the fallback).
    pub(super) async fn enqueue(
        &self,
        slot: &ServiceSlot,
        max_queued: u64,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Option<http::Response<Bytes>> {
        let name = slot.name();
        let bus = &self.inner.bus;
        let prefix = keys::queue_prefix(name);
        let limit = usize::try_from(max_queued).unwrap_or(usize::MAX);
        match bus.count(&prefix, limit) {
            Ok(n) if n >= limit => {
                tracing::warn!(
                    service = name,
                    max_queued,
                    "queue full; refusing the request"
                );
                return None;
            }
            Ok(_) => {}
            Err(e) => return Some(storage_failure(name, &e)),
        }
        let subject = parts
            .headers
            .get(SUBJECT_HEADER)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok());
        let claim = match idempotency::begin(
            bus,
            &self.inner.idempotent,
            name,
            slot.spec.policy.idempotency.ttl_secs,
            subject,
            parts,
            body,
        )
        .await
        {
            idempotency::Verdict::Run => None,
            idempotency::Verdict::Claimed(claim) => Some(claim),
            idempotency::Verdict::Answer(response) => return Some(response),
            idempotency::Verdict::Failed(why) => {
                return Some(storage_failure(name, &StoreError::Backend(why)));
            }
        };
        let id = hex::encode(rand::random::<[u8; 16]>());
        let queued_at = now_text();
        let job = Job {
            service: name.to_string(),
            subject: subject.map(str::to_string),
            queued_at: queued_at.clone(),
            result: None,
        };
        let retry_after = slot.spec.breaker.open_ms.div_ceil(1000);
        let response = Outcome {
            version: slot.active().label.clone(),
            result: Ok(accepted(name, &id, &queued_at, retry_after)),
        }
        .into_response(name);
        let mut unit = UnitOfWork::new(name);
        let encode =
            |value: serde_json::Result<Vec<u8>>| value.expect("a queued request serializes");
        unit.appends.push((
            prefix,
            encode(serde_json::to_vec(&Queued::of(&id, parts, body))),
        ));
        unit.host
            .push((keys::queued_job(&id), encode(serde_json::to_vec(&job))));
        if let Some(claim) = &claim {
            claim.record(&response, &mut unit);
        }
        if let Err(e) = bus.commit(&unit, None).await {
            return Some(storage_failure(name, &e));
        }
        bus.wake(&signal(name));
        self.inner.metrics.fallback(name, "queue");
        tracing::info!(service = name, id, method = %parts.method, path = parts.uri.path(), "request queued");
        Some(response)
    }

    /// `GET /_microhost/queue/{id}` for `caller` (the verified subject of the poll's
    /// token): `202` while the request waits, its result once it ran, `404` for an id
    /// that is unknown, expired or another caller's.
    pub(crate) async fn queued(&self, id: &str, caller: Option<&str>) -> http::Response<Bytes> {
        let value = match self.inner.bus.read_durable(&keys::queued_job(id)).await {
            Ok(Some(value)) => value,
            Ok(None) => return not_found(id),
            Err(e) => return storage_failure("-", &e),
        };
        let job: Job = match serde_json::from_slice(&value) {
            Ok(job) => job,
            Err(e) => {
                return storage_failure("-", &StoreError::Backend(format!("queued job {id}: {e}")));
            }
        };
        if job.subject.as_deref().is_some_and(|s| Some(s) != caller) {
            return not_found(id);
        }
        match job.result {
            None => accepted(&job.service, id, &job.queued_at, 1),
            Some(done) if done.expires_ms <= idempotency::now_ms() => not_found(id),
            Some(done) => {
                let mut response = done.response.to_response();
                response
                    .headers_mut()
                    .insert(FALLBACK_HEADER, HeaderValue::from_static("queue"));
                response
            }
        }
    }

    /// Replays the request at `key` of `slot`'s queue (its `attempt`th try).
    async fn replay(
        &self,
        slot: &ServiceSlot,
        key: &[u8],
        queued: &Queued,
        attempt: u32,
        (keep_secs, max_attempts): (u64, u32),
    ) -> Replay {
        let name = slot.name();
        let started = Instant::now();
        if !slot.is_healthy() {
            return Replay::Wait;
        }
        let _permit = match &slot.policy.concurrency {
            None => None,
            Some(shedder) => match shedder.enter().await {
                Ok(permit) => Some(permit),
                Err(_) => return Replay::Wait,
            },
        };
        let breakers = &self.inner.breakers;
        if !breakers.allow(name, Duration::from_millis(slot.spec.limits.timeout_ms)) {
            return Replay::Wait;
        }
        let ack = Ack::Queued { key: key.to_vec() };
        let id = queued.id.clone();
        let job_key = keys::queued_job(&id);
        // The job as queued (its subject and time), to add the result to.
        let job: Option<Job> = match self.inner.bus.read_durable(&job_key).await {
            Ok(value) => value.and_then(|value| serde_json::from_slice(&value).ok()),
            Err(_) => return Replay::Wait,
        };
        let finished = |response: &http::Response<Bytes>| -> (Vec<u8>, Vec<u8>) {
            let job = Job {
                service: name.to_string(),
                subject: job.as_ref().and_then(|j| j.subject.clone()),
                queued_at: job.as_ref().map_or_else(now_text, |j| j.queued_at.clone()),
                result: Some(Finished {
                    response: StoredResponse::of(response),
                    finished_at: now_text(),
                    attempts: attempt,
                    expires_ms: idempotency::now_ms()
                        .saturating_add(keep_secs.saturating_mul(1000)),
                }),
            };
            (
                job_key.clone(),
                serde_json::to_vec(&job).expect("a job serializes"),
            )
        };
        let record = |response: &http::Response<Bytes>, version: &str| {
            let mut tagged = response.clone();
            if let Ok(tag) = HeaderValue::from_str(&format!("{name}@{version}")) {
                tagged
                    .headers_mut()
                    .insert(crate::headers::SERVICE_HEADER, tag);
            }
            finished(&tagged)
        };
        // A stored request that no longer reads (a bug, or a damaged store) is not run:
        // its result says so, and the queue goes on.
        let (outcome, unreadable) = match queued.request() {
            Ok((parts, body)) => {
                let finish = Finish {
                    ack: &ack,
                    record: &record,
                };
                (
                    self.call_with(slot, &parts, &body, Some(&finish)).await,
                    false,
                )
            }
            Err(why) => (
                Outcome {
                    version: slot.active().label.clone(),
                    result: Err(DispatchError::Storage(format!(
                        "the queued request could not be read back: {why}"
                    ))),
                },
                true,
            ),
        };
        let class = outcome.class();
        match class.failed() {
            Some(true) if outcome.version != slot.active().label => {}
            Some(failed) => breakers.record(name, &slot.spec.breaker, !failed),
            None => {}
        }
        self.inner.metrics.request(
            name,
            &outcome.version,
            outcome.status().as_u16(),
            started.elapsed(),
        );
        if class.commits() {
            tracing::info!(
                service = name,
                id,
                status = outcome.status().as_u16(),
                "queued request replayed"
            );
            return Replay::Done;
        }
        match class {
            // Not now: the host refused, or the service says it is unavailable (a
            // service it calls is down). Later, without counting.
            Class::HostRefusal { .. } if !unreadable => return Replay::Wait,
            Class::ServerFailure { blamed: false, .. } => return Replay::Wait,
            Class::ServerFailure { .. } if attempt < max_attempts => return Replay::Failed,
            _ => {}
        }
        // Its last attempt failed: that failure is its result (and nothing of its
        // effects, as of any 5xx).
        tracing::warn!(
            service = name,
            id,
            attempt,
            status = outcome.status().as_u16(),
            "queued request failed; the failure is its result"
        );
        let response = outcome.into_response(name);
        let mut unit = UnitOfWork::new(name);
        unit.host.push(finished(&response));
        match self.inner.bus.commit(&unit, Some(&ack)).await {
            Ok(_) | Err(StoreError::Conflict(_)) => Replay::Done,
            Err(e) => {
                tracing::error!(service = name, id, error = %e, "storing a queued request's result failed");
                Replay::Wait
            }
        }
    }
}

fn storage_failure(service: &str, error: &StoreError) -> http::Response<Bytes> {
    let mut extra = serde_json::Map::new();
    extra.insert("service".into(), service.into());
    problem_bytes(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the request could not be queued or looked up: {error}"),
        extra,
    )
}

/// Deletes the results whose time is up; returns how many.
pub(crate) async fn sweep(bus: &Bus) -> Result<usize, StoreError> {
    let now = idempotency::now_ms();
    let expired = |value: &[u8]| {
        serde_json::from_slice::<Job>(value)
            .is_ok_and(|job| job.result.is_some_and(|done| done.expires_ms <= now))
    };
    bus.delete_expired(keys::QUEUED_JOB_PREFIX, &expired).await
}

/// Starts the replay loop of `slot`'s queue, if its fallback is `queue`. It stops when
/// `stop` turns true (the slot retired; the next slot's loop takes over the queue).
pub(crate) fn spawn(
    bus: &Arc<Bus>,
    slot: &Arc<ServiceSlot>,
    dispatcher: &Dispatcher,
    stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let FallbackSpec::Queue {
        keep_secs,
        max_attempts,
        ..
    } = slot.spec.policy.fallback
    else {
        return None;
    };
    Some(tokio::spawn(run(
        bus.clone(),
        slot.clone(),
        dispatcher.clone(),
        stop,
        (keep_secs, max_attempts),
    )))
}

async fn run(
    bus: Arc<Bus>,
    slot: Arc<ServiceSlot>,
    dispatcher: Dispatcher,
    mut stop: watch::Receiver<bool>,
    limits: (u64, u32),
) {
    let name = slot.name().to_string();
    let prefix = keys::queue_prefix(&name);
    let mut woken = bus.watch(&signal(&name));
    // Failed attempts of the request at the head (by key), in this loop's life.
    let mut failed: (Vec<u8>, u32) = (Vec::new(), 0);
    // Waits in a row for a service that takes no calls.
    let mut waited = 0;
    while !*stop.borrow() {
        woken.borrow_and_update();
        let head = match bus.first(&prefix) {
            Ok(head) => head,
            Err(e) => {
                tracing::error!(service = name, error = %e, "reading the queue failed");
                pause(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some((key, value)) = head else {
            tokio::select! {
                _ = woken.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        if failed.0 != key {
            failed = (key.clone(), 0);
        }
        let queued = serde_json::from_slice::<Queued>(&value).unwrap_or_else(|e| Queued {
            id: format!("unreadable-{}", keys::trailing_u64(&key)),
            method: format!("unreadable: {e}"),
            uri: String::new(),
            headers: Vec::new(),
            body: String::new(),
        });
        match dispatcher
            .replay(&slot, &key, &queued, failed.1 + 1, limits)
            .await
        {
            Replay::Done => waited = 0,
            // Waits grow from WAIT to MAX_WAIT while the service stays unavailable.
            Replay::Wait => {
                pause(&mut stop, (WAIT * 2u32.pow(waited)).min(MAX_WAIT)).await;
                waited = (waited + 1).min(5);
            }
            Replay::Failed => {
                failed.1 += 1;
                let backoff = slot.policy.backoff(failed.1).max(WAIT);
                tracing::info!(
                    service = name,
                    id = queued.id,
                    attempt = failed.1,
                    "queued request failed; will retry"
                );
                pause(&mut stop, backoff).await;
            }
        }
    }
}
