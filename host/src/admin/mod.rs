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
//! - `POST /admin/apply`: reads the host's manifest file again and makes the running
//!   services match it (add, remove, reconfigure, deploy changed components)
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text): requests, latency, in-flight,
//!   rate limits, shedding, retries, cache, fallbacks, breakers, bus counters
//! - `GET /admin/topics`: topics, lengths, per-subscription lag and counters
//! - `GET /admin/subscriptions/{service}/{topic}/dead-letters`
//! - `POST /admin/subscriptions/{service}/{topic}/redrive`
//! - `POST /admin/subscriptions/{service}/{topic}/replay?from=N`

mod bus;
pub mod client;
mod views;

use crate::bus::Bus;
use crate::config::{Manifest, VersionLabel};
use crate::dispatch::Dispatcher;
use crate::problem::{problem, problem_with};
use crate::registry::{DeployMode, Registry, RegistryError};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use std::sync::Arc;
use views::{CatalogView, ChangeView, HistoryView, ServiceStatus, ServiceView, VersionsView};

/// Largest component upload.
pub const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;

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
pub fn router(
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
        .route("/admin/services", get(list_services))
        .route("/admin/services/{name}", get(status))
        .route(
            "/admin/services/{name}/versions",
            post(deploy).get(versions),
        )
        .route("/admin/services/{name}/activate", post(activate))
        .route("/admin/services/{name}/canary", post(canary))
        .route("/admin/services/{name}/promote", post(promote))
        .route("/admin/services/{name}/rollback", post(rollback))
        .route("/admin/services/{name}/history", get(history))
        .route("/admin/apply", post(apply))
        .route("/metrics", get(metrics))
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

/// A service's status with its callers' circuit breaker.
fn service_view(state: &AdminState, service: &crate::registry::ServiceState) -> ServiceView {
    ServiceView {
        status: ServiceStatus::new(service),
        breaker: state.dispatcher.breakers().status(service.slot.name()),
    }
}

async fn list_services(State(state): State<AdminState>) -> Response {
    let services = state.registry.states().await;
    let services = services.iter().map(|s| service_view(&state, s)).collect();
    axum::Json(CatalogView { services }).into_response()
}

/// A refused registry change as a problem: 404 unknown service or version, 400 invalid
/// input or component, 409 conflicts and changes that do not apply, 422 a version that
/// fails its health gate.
fn registry_problem(service: &str, error: RegistryError) -> Response {
    let status = match &error {
        RegistryError::UnknownService { .. } | RegistryError::UnknownVersion { .. } => {
            StatusCode::NOT_FOUND
        }
        RegistryError::InvalidVersion(_) | RegistryError::Component(_) => StatusCode::BAD_REQUEST,
        RegistryError::VersionConflict { .. } | RegistryError::Refused(_) => StatusCode::CONFLICT,
        RegistryError::Unhealthy { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        RegistryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(service, %status, error = %error, "registry change refused");
    let mut extra = serde_json::Map::new();
    extra.insert("service".into(), service.into());
    problem_with(status, error.to_string(), extra).into_response()
}

fn bad_query(what: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, what.to_string()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployQuery {
    version: Option<String>,
    /// Deploy as a canary with this weight (percent).
    canary: Option<u8>,
    /// `false`: only store the version.
    activate: Option<bool>,
}

async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query(
            "query parameters are `version` (the version label), `canary` (a weight from 1 \
             to 100) and `activate` (true or false)",
        );
    };
    if body.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "the request body must be the component's .wasm bytes; it is empty",
        )
        .into_response();
    }
    let mode = match (query.canary, query.activate) {
        (Some(_), Some(false)) => {
            return bad_query("`canary` and `activate=false` contradict each other");
        }
        (Some(weight), _) => DeployMode::Canary(weight),
        (None, Some(false)) => DeployMode::Store,
        (None, _) => DeployMode::Activate,
    };
    let label = match query.version.map(VersionLabel::try_from).transpose() {
        Ok(label) => label,
        Err(e) => return registry_problem(&name, RegistryError::InvalidVersion(e.to_string())),
    };
    match state.registry.deploy(&name, label, body, mode).await {
        Ok(deployed) => {
            let status = if deployed.switched || deployed.stored {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(deployed)).into_response()
        }
        Err(error) => registry_problem(&name, error),
    }
}

/// `POST /admin/apply`: 200 with what changed; 422 with the same report when a
/// service's change was refused (that service is left as it was); 400 when the
/// manifest itself is invalid (nothing changes).
async fn apply(State(state): State<AdminState>) -> Response {
    let Some(path) = &state.manifest else {
        return problem(
            StatusCode::CONFLICT,
            "this host was started without a manifest file (serve --component); there is \
             nothing to apply",
        )
        .into_response();
    };
    let manifest = match Manifest::load(path) {
        Ok(manifest) => manifest,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let report = state.registry.apply(&manifest).await;
    if report.refused.is_empty() {
        return axum::Json(report).into_response();
    }
    let detail = report
        .refused
        .iter()
        .map(|r| format!("service {:?}: {}", r.service, r.reason))
        .collect::<Vec<_>>()
        .join("; ");
    let mut extra = serde_json::Map::new();
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&report) {
        extra.extend(fields);
    }
    problem_with(StatusCode::UNPROCESSABLE_ENTITY, detail, extra).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: String,
    weight: Option<u8>,
}

/// The answer to a change: the history entry it wrote and the service's state after.
async fn changed(
    state: &AdminState,
    name: &str,
    result: Result<crate::registry::record::HistoryEntry, RegistryError>,
) -> Response {
    match result {
        Ok(change) => match state.registry.state(name).await {
            Ok(service) => axum::Json(ChangeView {
                change,
                status: ServiceStatus::new(&service),
            })
            .into_response(),
            Err(error) => registry_problem(name, error),
        },
        Err(error) => registry_problem(name, error),
    }
}

async fn activate(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(VersionQuery {
        version,
        weight: None,
    })) = query
    else {
        return bad_query("the query parameter is `version` (a stored version label)");
    };
    let result = state.registry.activate(&name, &version).await;
    changed(&state, &name, result).await
}

async fn canary(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(VersionQuery {
        version,
        weight: Some(weight),
    })) = query
    else {
        return bad_query(
            "query parameters are `version` (a stored version label) and `weight` (0 to 100; \
             0 ends the canary)",
        );
    };
    let result = state.registry.set_canary(&name, &version, weight).await;
    changed(&state, &name, result).await
}

async fn promote(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let result = state.registry.promote(&name).await;
    changed(&state, &name, result).await
}

async fn rollback(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let result = state.registry.rollback(&name, None).await;
    changed(&state, &name, result).await
}

async fn status(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.registry.state(&name).await {
        Ok(service) => axum::Json(service_view(&state, &service)).into_response(),
        Err(error) => registry_problem(&name, error),
    }
}

async fn versions(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.registry.state(&name).await {
        Ok(service) => axum::Json(VersionsView::new(&name, &service.record)).into_response(),
        Err(error) => registry_problem(&name, error),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_history_limit")]
    limit: usize,
}

fn default_history_limit() -> usize {
    100
}

async fn history(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_query("query parameters are `after` (a sequence number) and `limit`");
    };
    match state
        .registry
        .history(&name, query.after, query.limit.clamp(1, 1000))
    {
        Ok(history) => axum::Json(HistoryView {
            service: name,
            history,
        })
        .into_response(),
        Err(error) => registry_problem(&name, error),
    }
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
