//! The admin API, on its own listener (loopback by default) and behind a bearer token:
//! the service catalog and deploys.
//!
//! - `GET /admin/services`: the catalog: every service, its route, versions, weights,
//!   health, in-flight counts and breaker
//! - `GET /admin/services/{name}`: one service's status
//! - `POST /admin/services/{name}/versions?version=V[&canary=W|&activate=false]`: body =
//!   a `.wasm` component; validates, stores, health-checks and activates it (or makes it
//!   the canary with weight W, or only stores it)
//! - `GET /admin/services/{name}/versions`: stored versions and their roles
//! - `POST /admin/services/{name}/activate?version=V`
//! - `POST /admin/services/{name}/canary?version=V&weight=W` (0 ends the canary)
//! - `POST /admin/services/{name}/promote`, `POST /admin/services/{name}/rollback`
//! - `GET /admin/services/{name}/history?after=N&limit=M`
//! - `GET /admin/services/{name}/logs?limit=N[&follow=true]`: the last lines its guests
//!   wrote (stdout, stderr), tagged with version, request id and trace id; following,
//!   as server-sent events
//! - `POST /admin/apply`: reads the host's manifest file again and makes the running
//!   services match it (add, remove, reconfigure, deploy changed components)
//! - `GET /healthz` (liveness): 200 `{"status":"ok"}`, or 503 with the reason once the
//!   store stopped after a failed flush (only a restart cures that); also on the
//!   gateway, without a token
//! - `GET /readyz` (readiness): 200 `{"status":"ready","services":N}` when the store is
//!   open and every service's active version passes its health checks, else 503 naming
//!   the ones that do not (`unready`); also on the gateway, without a token
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text): requests, latency, in-flight,
//!   rate limits, shedding, retries, cache, fallbacks, breakers, bus counters
//! - `GET /admin/topics`: topics, lengths, per-subscription lag and counters
//! - `GET /admin/subscriptions/{service}/{topic}/dead-letters`
//! - `POST /admin/subscriptions/{service}/{topic}/redrive`
//! - `POST /admin/subscriptions/{service}/{topic}/replay?from=N`

mod bus;
pub mod client;
mod services;
mod views;

use crate::bus::Bus;
use crate::dispatch::Dispatcher;
use crate::problem::problem;
use crate::registry::Registry;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;

/// Largest component upload.
pub(crate) const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    bus: Arc<Bus>,
    dispatcher: Dispatcher,
    token: Arc<str>,
    /// The manifest file `POST /admin/apply` reads again.
    manifest: Option<Arc<std::path::Path>>,
}

/// The admin API's routes, every one behind the bearer token.
pub(crate) fn router(
    registry: Arc<Registry>,
    bus: Arc<Bus>,
    dispatcher: Dispatcher,
    token: Arc<str>,
    manifest: Option<std::path::PathBuf>,
) -> Router {
    let state = AdminState {
        registry,
        bus,
        dispatcher,
        token,
        manifest: manifest.map(Arc::from),
    };
    Router::new()
        .route("/admin/services", get(services::list_services))
        .route("/admin/services/{name}", get(services::status))
        .route(
            "/admin/services/{name}/versions",
            post(services::deploy).get(services::versions),
        )
        .route("/admin/services/{name}/activate", post(services::activate))
        .route("/admin/services/{name}/canary", post(services::canary))
        .route("/admin/services/{name}/promote", post(services::promote))
        .route("/admin/services/{name}/rollback", post(services::rollback))
        .route("/admin/services/{name}/history", get(services::history))
        .route("/admin/services/{name}/logs", get(services::logs))
        .route("/admin/apply", post(services::apply))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/admin/topics", get(bus::topics))
        .route(
            "/admin/subscriptions/{service}/{topic}/dead-letters",
            get(bus::dead_letters),
        )
        .route(
            "/admin/subscriptions/{service}/{topic}/redrive",
            post(bus::redrive),
        )
        .route(
            "/admin/subscriptions/{service}/{topic}/replay",
            post(bus::replay),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// The host's health, as on the gateway's `/healthz` (here behind the token).
async fn health(State(state): State<AdminState>) -> Response {
    state
        .dispatcher
        .health()
        .map(axum::body::Body::from)
        .into_response()
}

/// The host's readiness, as on the gateway's `/readyz` (here behind the token).
async fn ready(State(state): State<AdminState>) -> Response {
    state
        .dispatcher
        .readiness()
        .map(axum::body::Body::from)
        .into_response()
}

/// Prometheus text exposition (OpenMetrics 1.0).
async fn metrics(State(state): State<AdminState>) -> Response {
    let text = state.dispatcher.metrics().encode();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = crate::auth::bearer(request.headers());
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut response = problem(
                StatusCode::UNAUTHORIZED,
                "the admin API needs `Authorization: Bearer <token>` with the admin token",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response.into_response()
        }
    }
}

/// Compares without an early exit, so response timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(request: Request) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        format!(
            "no admin endpoint at {} {}",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
