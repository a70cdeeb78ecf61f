//! The edge: routes each request to a service by path prefix and applies the route's
//! policies in order: request id and trace context; CORS preflight; bearer token on
//! protected routes (identity headers a client sends are stripped); rate limit; body
//! limit (413 before the body is read when the length is declared), body timeout and
//! minimum rate (408, connection closed); path and header
//! transformation; then [`Dispatcher::serve`] (cache, load shedding, circuit breaker,
//! retries, fallback). Every answer carries `x-request-id` and is written to the access
//! log (target `microhost::access`).

pub(crate) mod cors;
pub(crate) mod server;
pub(crate) mod trace;
pub(crate) mod transform;

use crate::auth::Auth;
use crate::body::BodyError;
use crate::capability::outgoing::{set_identity_headers, strip_identity_headers};
use crate::config::RateLimitKey;
use crate::dispatch::{Dispatcher, queue};
use crate::headers::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};
use crate::problem::problem_bytes;
use crate::registry::{Registry, ServiceSlot};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The host's own health checks, answered before routing (no service can take them):
/// liveness and readiness, as Kubernetes probes expect.
pub(crate) const HEALTH_PATH: &str = "/healthz";
pub(crate) const READY_PATH: &str = "/readyz";

/// The gateway: a router over the registry's services.
pub(crate) struct Gateway {
    registry: Arc<Registry>,
    dispatcher: Dispatcher,
    auth: Arc<Auth>,
    /// How fast a request body must arrive.
    pace: BodyPace,
}

/// How a request body must arrive: whole within `timeout` (`--body-timeout-secs`), and,
/// after `grace` (`--body-rate-grace-secs`), at `min_rate` bytes a second on average
/// since it began (`--min-body-rate`; 0 turns it off). Either failing is a 408 and the
/// connection closed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyPace {
    pub(crate) timeout: Duration,
    pub(crate) min_rate: u64,
    pub(crate) grace: Duration,
}

impl BodyPace {
    pub(crate) fn of(limits: &server::ServerLimits) -> BodyPace {
        BodyPace {
            timeout: limits.body_read_timeout,
            min_rate: limits.min_body_rate,
            grace: limits.body_rate_grace,
        }
    }

    /// Whether `received` bytes, `elapsed` into a body, are too few: past the grace
    /// period and below the minimum average rate.
    fn too_slow(&self, received: u64, elapsed: Duration) -> bool {
        self.min_rate > 0
            && elapsed > self.grace
            && (received as f64) < self.min_rate as f64 * elapsed.as_secs_f64()
    }

    /// Resolves, with the bytes received so far, once the body counted in `received`
    /// (since `started`) falls below the minimum rate; never when the rate is off.
    async fn broken(&self, received: &AtomicU64, started: tokio::time::Instant) -> u64 {
        if self.min_rate == 0 {
            return std::future::pending().await;
        }
        tokio::time::sleep_until(started + self.grace).await;
        // Checked once a second (as Kestrel does), not per frame: a body that stalls
        // sends no frame to check on.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let got = received.load(Ordering::Relaxed);
            if self.too_slow(got, started.elapsed()) {
                return got;
            }
        }
    }
}

/// What the access log says about a request.
struct Answer {
    response: http::Response<Bytes>,
    service: String,
    version: String,
}

impl Gateway {
    pub(crate) fn new(
        registry: Arc<Registry>,
        dispatcher: Dispatcher,
        auth: Arc<Auth>,
        pace: BodyPace,
    ) -> Gateway {
        Gateway {
            registry,
            dispatcher,
            auth,
            pace,
        }
    }

    /// Serves one request from `peer`. Never fails: every outcome is an HTTP response.
    pub(crate) async fn handle(
        &self,
        req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> http::Response<Full<Bytes>> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let request_id = trace::request_id(parts.headers.get(REQUEST_ID_HEADER));
        let incoming = parts
            .headers
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let traceparent = trace::child_traceparent(parts.headers.get(TRACEPARENT_HEADER));
        let method = parts.method.clone();
        let path = parts.uri.path().to_string();
        let route = self.registry.route(&path);
        // The edge span has the ids of the traceparent the request goes on with (and the
        // sampler's verdict in its flags).
        let mut edge = self.dispatcher.tracer().adopt(
            || {
                format!(
                    "{method} {}",
                    route.as_ref().map_or("-", |slot| slot.spec.route.as_str())
                )
            },
            opentelemetry::trace::SpanKind::Server,
            incoming.as_deref(),
            &traceparent,
        );
        let traceparent = edge.traceparent().unwrap_or(&traceparent).to_string();
        if edge.is_recording() {
            edge.set("http.request.method", method.to_string());
            edge.set("url.path", path.clone());
            edge.set("client.address", peer.ip().to_string());
            edge.set("microhost.request_id", request_id.clone());
            if let Some(slot) = &route {
                edge.set("http.route", slot.spec.route.to_string());
            }
        }
        for (name, value) in [
            (REQUEST_ID_HEADER, &request_id),
            (TRACEPARENT_HEADER, &traceparent),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                parts.headers.insert(HeaderName::from_static(name), value);
            }
        }
        let answer = match route {
            _ if path == HEALTH_PATH && matches!(method, Method::GET | Method::HEAD) => Answer {
                response: self.dispatcher.health(),
                service: "-".to_string(),
                version: "-".to_string(),
            },
            _ if path == READY_PATH && matches!(method, Method::GET | Method::HEAD) => Answer {
                response: self.dispatcher.readiness(),
                service: "-".to_string(),
                version: "-".to_string(),
            },
            _ if path.starts_with(queue::PATH_PREFIX)
                && matches!(method, Method::GET | Method::HEAD) =>
            {
                Answer {
                    response: self
                        .poll_queue(&path[queue::PATH_PREFIX.len()..], &parts)
                        .await,
                    service: "-".to_string(),
                    version: "-".to_string(),
                }
            }
            Some(slot) => self.forward(&slot, parts, body, peer).await,
            None => Answer {
                response: problem_bytes(
                    StatusCode::NOT_FOUND,
                    format!("no service is routed at {path:?}"),
                    serde_json::Map::new(),
                ),
                service: "-".to_string(),
                version: "-".to_string(),
            },
        };
        let mut response = answer.response;
        if edge.is_recording() {
            edge.set("microhost.service", answer.service.clone());
            edge.set("microhost.version", answer.version.clone());
            edge.status(response.status().as_u16());
        }
        drop(edge);
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        tracing::info!(
            target: "microhost::access",
            %method,
            path,
            status = response.status().as_u16(),
            service = answer.service,
            version = answer.version,
            latency_us = started.elapsed().as_micros() as u64,
            request_id,
            trace_id = trace::trace_id(&traceparent).unwrap_or("-"),
            span_id = trace::span_id(&traceparent).unwrap_or("-"),
            peer = %peer,
        );
        response.map(Full::new)
    }

    async fn forward(
        &self,
        slot: &Arc<ServiceSlot>,
        mut parts: http::request::Parts,
        body: Incoming,
        peer: SocketAddr,
    ) -> Answer {
        let policy = &slot.policy;
        let refused = |response: http::Response<Bytes>| Answer {
            response,
            service: slot.name().to_string(),
            version: "-".to_string(),
        };
        let origin = parts.headers.get(header::ORIGIN).cloned();
        if let Some(cors) = &policy.spec.cors
            && let Some(response) = cors::preflight(cors, &parts)
        {
            return refused(response);
        }
        // Identity headers come from the host only.
        strip_identity_headers(&mut parts.headers);
        let identity = match self.authenticate(slot, &parts) {
            Ok(identity) => identity,
            Err(response) => return refused(self.finish(slot, *response, origin.as_ref())),
        };
        if let Some(identity) = &identity {
            set_identity_headers(&mut parts.headers, identity);
        }
        let mut rate_headers = None;
        if let Some(limit) = &policy.rate_limit {
            let ip = peer.ip().to_string();
            let key = match (limit.spec.key, &identity) {
                (RateLimitKey::Subject, Some(identity)) => format!("sub:{}", identity.key()),
                _ => format!("ip:{ip}"),
            };
            let decision = limit.check(&key);
            let reset = decision.reset.as_secs_f64().ceil() as u64;
            let headers = [
                ("ratelimit-limit", decision.limit.to_string()),
                ("ratelimit-remaining", decision.remaining.to_string()),
                ("ratelimit-reset", reset.to_string()),
            ];
            if !decision.allowed {
                self.dispatcher.metrics().rate_limited(slot.name());
                let mut response = problem_bytes(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "rate limit of {} requests a second (burst {}) exceeded; retry in {reset} s",
                        limit.spec.per_second,
                        limit.spec.burst()
                    ),
                    service_fields(slot.name()),
                );
                set_headers(response.headers_mut(), &headers);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(reset.max(1)));
                return refused(self.finish(slot, response, origin.as_ref()));
            }
            rate_headers = Some(headers);
        }
        let body = match read_body(slot, &parts, body, self.pace).await {
            Ok(body) => body,
            Err(response) => return refused(self.finish(slot, *response, origin.as_ref())),
        };
        // wasi:http needs an authority; HTTP/1.0 clients may send no Host.
        if parts.uri.authority().is_none() && !parts.headers.contains_key(header::HOST) {
            parts
                .headers
                .insert(header::HOST, HeaderValue::from_static("localhost"));
        }
        let transform = &policy.spec.transform;
        parts.uri = transform::rewrite_uri(transform, &parts.uri);
        transform::apply_headers(&transform.request_headers, &mut parts.headers);

        let (mut response, version) = self
            .dispatcher
            .serve(slot, http::Request::from_parts(parts, body))
            .await;
        if let Some(headers) = &rate_headers {
            set_headers(response.headers_mut(), headers);
        }
        Answer {
            response: self.finish(slot, response, origin.as_ref()),
            service: slot.name().to_string(),
            version,
        }
    }

    /// The route's response headers: transformation and CORS.
    fn finish(
        &self,
        slot: &ServiceSlot,
        mut response: http::Response<Bytes>,
        origin: Option<&HeaderValue>,
    ) -> http::Response<Bytes> {
        let spec = &slot.policy.spec;
        transform::apply_headers(&spec.transform.response_headers, response.headers_mut());
        if let Some(cors) = &spec.cors {
            cors::decorate(cors, origin, response.headers_mut());
        }
        response
    }

    /// `GET /_microhost/queue/{id}`: where a request the `queue` fallback stored stands.
    /// A request queued under a token answers only to a valid token of the same subject.
    async fn poll_queue(&self, id: &str, parts: &http::request::Parts) -> http::Response<Bytes> {
        let caller = match crate::auth::bearer(&parts.headers).map(|t| self.auth.verify(t)) {
            None => None,
            Some(Ok(identity)) => Some(identity.subject),
            Some(Err(why)) => {
                let mut response =
                    problem_bytes(StatusCode::UNAUTHORIZED, why, serde_json::Map::new());
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        };
        self.dispatcher.queued(id, caller.as_deref()).await
    }

    /// Verifies the bearer token, if any. On a protected route (and not a `public`
    /// exception) one is required; a bearer token that is present must be valid
    /// anywhere. Other `Authorization` schemes pass through to unprotected routes, for
    /// services that authenticate their own way.
    fn authenticate(
        &self,
        slot: &ServiceSlot,
        parts: &http::request::Parts,
    ) -> Result<Option<crate::auth::Identity>, Box<http::Response<Bytes>>> {
        let required = slot.requires_token(parts.method.as_str(), parts.uri.path());
        let unauthorized = |detail: String| {
            let mut response = problem_bytes(
                StatusCode::UNAUTHORIZED,
                detail,
                service_fields(slot.name()),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Box::new(response)
        };
        let token = match crate::auth::bearer(&parts.headers) {
            Some(token) => token,
            None if required => {
                return Err(unauthorized(
                    "this route needs `Authorization: Bearer <token>`".to_string(),
                ));
            }
            None => return Ok(None),
        };
        self.auth.verify(token).map(Some).map_err(unauthorized)
    }
}

/// The request body, up to the service's limit: a declared larger length is refused
/// before any of the body is read, an undeclared one as soon as it passes the limit; a
/// body that does not keep `pace` is a 408.
async fn read_body(
    slot: &ServiceSlot,
    parts: &http::request::Parts,
    body: Incoming,
    pace: BodyPace,
) -> Result<Bytes, Box<http::Response<Bytes>>> {
    let max_body = slot.spec.limits.max_body_kib.saturating_mul(1024);
    let too_large = || {
        Box::new(problem_bytes(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the limit of {max_body} bytes for service {:?}",
                slot.name()
            ),
            service_fields(slot.name()),
        ))
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(too_large());
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let started = tokio::time::Instant::now();
    let received = AtomicU64::new(0);
    let counted = body.inspect_frame(|frame| {
        if let Some(data) = frame.data_ref() {
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    });
    let late = |detail: String| {
        let mut response = problem_bytes(
            StatusCode::REQUEST_TIMEOUT,
            detail,
            service_fields(slot.name()),
        );
        // What is left of the body is never read: the connection cannot carry another
        // request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Box::new(response)
    };
    let read = tokio::select! {
        read = crate::body::collect(counted, limit) => read,
        () = tokio::time::sleep_until(started + pace.timeout) => {
            return Err(late(format!(
                "the request body did not arrive within {} s",
                pace.timeout.as_secs_f64()
            )));
        }
        got = pace.broken(&received, started) => {
            return Err(late(format!(
                "the request body arrived too slowly: {got} bytes in {:.1} s, below the \
                 minimum of {} bytes a second",
                started.elapsed().as_secs_f64(),
                pace.min_rate
            )));
        }
    };
    match read {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge(_)) => Err(too_large()),
        Err(BodyError::Failed(e)) => Err(Box::new(problem_bytes(
            StatusCode::BAD_REQUEST,
            format!("failed to read the request body: {e}"),
            serde_json::Map::new(),
        ))),
    }
}

fn set_headers(headers: &mut http::HeaderMap, values: &[(&'static str, String); 3]) {
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

fn service_fields(service: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    extra.insert("service".into(), service.into());
    extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_too_slow_only_past_the_grace_and_below_the_average() {
        let pace = BodyPace {
            timeout: Duration::from_secs(30),
            min_rate: 240,
            grace: Duration::from_secs(5),
        };
        let secs = Duration::from_secs;
        assert!(!pace.too_slow(0, secs(5)), "within the grace period");
        assert!(
            pace.too_slow(1, Duration::from_millis(5001)),
            "a trickle after it"
        );
        assert!(!pace.too_slow(240 * 6, secs(6)), "exactly the minimum");
        assert!(pace.too_slow(240 * 6 - 1, secs(6)), "just below");
        assert!(
            !pace.too_slow(10_000, secs(20)),
            "a fast start pays for a later pause"
        );
        let off = BodyPace {
            min_rate: 0,
            ..pace
        };
        assert!(!off.too_slow(0, secs(29)), "0 turns the rate off");
    }
}
