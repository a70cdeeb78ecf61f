//! Admin endpoints of the registry: the catalog, one service's status, its versions and
//! history, deploys, the lifecycle changes (activate, canary, promote, rollback) and
//! applying the manifest again; each answers with a view from `views`.

use super::AdminState;
use super::views::{
    CatalogView, ChangeView, HistoryView, ServiceStatus, ServiceView, VersionsView,
};
use crate::config::{Manifest, VersionLabel};
use crate::problem::{problem, problem_with};
use crate::registry::{DeployMode, RegistryError, ServiceState};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;

/// A service's status with its callers' circuit breaker.
fn service_view(state: &AdminState, service: &ServiceState) -> ServiceView {
    ServiceView {
        status: ServiceStatus::new(service),
        breaker: state.dispatcher.breakers().status(service.slot.name()),
    }
}

pub(super) async fn list_services(State(state): State<AdminState>) -> Response {
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
pub(super) struct DeployQuery {
    version: Option<String>,
    /// Deploy as a canary with this weight (percent).
    canary: Option<u8>,
    /// `false`: only store the version.
    activate: Option<bool>,
}

pub(super) async fn deploy(
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
    // An unknown service is a 404 whatever else is wrong, as it always was.
    if state.registry.get(&name).is_none() {
        let error = RegistryError::UnknownService { name: name.clone() };
        return registry_problem(&name, error);
    }
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
pub(super) async fn apply(State(state): State<AdminState>) -> Response {
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
pub(super) struct ActivateQuery {
    version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CanaryQuery {
    version: String,
    weight: u8,
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

pub(super) async fn activate(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<ActivateQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(ActivateQuery { version })) = query else {
        return bad_query("the query parameter is `version` (a stored version label)");
    };
    let result = state.registry.activate(&name, &version).await;
    changed(&state, &name, result).await
}

pub(super) async fn canary(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<CanaryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(CanaryQuery { version, weight })) = query else {
        return bad_query(
            "query parameters are `version` (a stored version label) and `weight` (0 to 100; \
             0 ends the canary)",
        );
    };
    let result = state.registry.set_canary(&name, &version, weight).await;
    changed(&state, &name, result).await
}

pub(super) async fn promote(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let result = state.registry.promote(&name).await;
    changed(&state, &name, result).await
}

pub(super) async fn rollback(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Response {
    let result = state.registry.rollback(&name, None).await;
    changed(&state, &name, result).await
}

pub(super) async fn status(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.registry.state(&name).await {
        Ok(service) => axum::Json(service_view(&state, &service)).into_response(),
        Err(error) => registry_problem(&name, error),
    }
}

pub(super) async fn versions(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Response {
    match state.registry.state(&name).await {
        Ok(service) => axum::Json(VersionsView::new(&name, &service.record)).into_response(),
        Err(error) => registry_problem(&name, error),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_history_limit")]
    limit: usize,
}

fn default_history_limit() -> usize {
    100
}

pub(super) async fn history(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    #[serde(default = "default_history_limit")]
    limit: usize,
    /// Keep the answer open and send each new line as it is written (SSE).
    #[serde(default)]
    follow: bool,
}

/// `GET /admin/services/{name}/logs?limit=N[&follow=true]`: the last lines its guests
/// wrote to stdout and stderr (JSON), or, following, those and every later one as
/// server-sent events (`event: line`, the line as JSON; `event: lagged` with how many
/// were skipped when the reader fell behind).
pub(super) async fn logs(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let Ok(Query(query)) = query else {
        return bad_query("query parameters are `limit` (lines) and `follow` (true or false)");
    };
    let Some(slot) = state.registry.get(&name) else {
        return registry_problem(&name, RegistryError::UnknownService { name: name.clone() });
    };
    let limit = query.limit.clamp(1, crate::capability::log::KEPT_LINES);
    let log = &slot.grants.log;
    if !query.follow {
        return axum::Json(serde_json::json!({ "service": name, "lines": log.tail(limit) }))
            .into_response();
    }
    let (tail, live) = log.follow(limit);
    let line = |line: &crate::capability::log::LogLine| {
        Event::default()
            .event("line")
            .json_data(line)
            .unwrap_or_else(|_| Event::default().comment("unencodable line"))
    };
    let backlog = futures_util::stream::iter(tail.iter().map(line).collect::<Vec<_>>());
    let live = futures_util::stream::unfold(live, move |mut live| async move {
        let event = match live.recv().await {
            Ok(next) => line(&next),
            Err(RecvError::Lagged(skipped)) => {
                Event::default().event("lagged").data(skipped.to_string())
            }
            Err(RecvError::Closed) => return None,
        };
        Some((event, live))
    });
    use futures_util::StreamExt as _;
    let events = backlog.chain(live).map(Ok::<_, std::convert::Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
