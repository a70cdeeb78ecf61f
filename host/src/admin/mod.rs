//! The admin API, on its own listener (loopback by default) and behind a bearer token:
//! the service catalog and deploys.
//!
//! - `GET /admin/services`: every service, its route, limits and active version
//! - `POST /admin/services/{name}/versions?version=V`: body = a `.wasm` component;
//!   validates, compiles and atomically activates it
//! - `GET /admin/topics`: topics, lengths, per-subscription lag and counters
//! - `GET /admin/subscriptions/{service}/{topic}/dead-letters`
//! - `POST /admin/subscriptions/{service}/{topic}/redrive`
//! - `POST /admin/subscriptions/{service}/{topic}/replay?from=N`

mod bus;
pub mod client;

use crate::bus::Bus;
use crate::dispatch::Dispatcher;
use crate::gateway::problem::{problem, problem_with};
use crate::registry::{Registry, RegistryError};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use std::sync::Arc;

/// Largest component upload.
pub const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    bus: Arc<Bus>,
    dispatcher: Dispatcher,
    token: Arc<str>,
}

/// The admin API's routes, every one behind the bearer token.
pub fn router(
    registry: Arc<Registry>,
    bus: Arc<Bus>,
    dispatcher: Dispatcher,
    token: Arc<str>,
) -> Router {
    let state = AdminState {
        registry,
        bus,
        dispatcher,
        token,
    };
    Router::new()
        .route("/admin/services", get(list_services))
        .route("/admin/services/{name}/versions", post(deploy))
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

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
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

async fn list_services(State(state): State<AdminState>) -> Response {
    let services: Vec<serde_json::Value> = state
        .registry
        .services()
        .map(|slot| {
            let active = slot.active();
            serde_json::json!({
                "name": slot.name,
                "route": slot.route,
                "publishes": slot.publishes.iter().collect::<Vec<_>>(),
                "subscribes": slot.subscriptions.iter().map(|s| &s.topic).collect::<Vec<_>>(),
                "calls": slot.calls.iter().collect::<Vec<_>>(),
                "protected": slot.protected,
                "breaker": state.dispatcher.breakers().status(&slot.name),
                "limits": {
                    "memory_mib": slot.limits.memory_mib,
                    "timeout_ms": slot.limits.timeout_ms,
                    "max_body_kib": slot.limits.max_body_kib,
                },
                "active": {
                    "version": active.label,
                    "sha256": active.prepared.sha256,
                    "deployed_at": humantime_secs(active.deployed_at),
                    "in_flight": active.in_flight(),
                    "served": active.served(),
                },
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "services": services })).into_response()
}

fn humantime_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployQuery {
    version: Option<String>,
}

async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Response {
    let Ok(Query(query)) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the only query parameter is `version` (the version label)",
        )
        .into_response();
    };
    if body.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "the request body must be the component's .wasm bytes; it is empty",
        )
        .into_response();
    }
    match state.registry.deploy(&name, query.version, body).await {
        Ok(deployed) => {
            let status = if deployed.switched {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(deployed)).into_response()
        }
        Err(error) => {
            let status = match &error {
                RegistryError::UnknownService { .. } => StatusCode::NOT_FOUND,
                RegistryError::InvalidVersion(_) | RegistryError::Component(_) => {
                    StatusCode::BAD_REQUEST
                }
                RegistryError::VersionConflict { .. } => StatusCode::CONFLICT,
                RegistryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(service = %name, %status, error = %error, "deploy refused");
            let mut extra = serde_json::Map::new();
            extra.insert("service".into(), name.into());
            problem_with(status, error.to_string(), extra).into_response()
        }
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
