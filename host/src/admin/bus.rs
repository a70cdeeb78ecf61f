//! Admin endpoints of the event bus: topics with lengths and per-subscriber lag, dead
//! letters, redrive and replay.

use super::AdminState;
use super::views::{
    DeadLettersView, RedriveView, ReplayView, SubscriptionView, TopicView, TopicsView,
};
use crate::bus::dead_letter_topic;
use crate::problem::problem;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use std::collections::BTreeSet;

fn internal(e: impl std::fmt::Display) -> Response {
    problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

/// `GET /admin/topics`: every topic the manifest names, its length, and each
/// subscription's cursor, lag, dead letters and counters.
pub(super) async fn topics(State(state): State<AdminState>) -> Response {
    let mut names = BTreeSet::new();
    for slot in state.registry.services() {
        names.extend(slot.spec.publishes.iter().map(ToString::to_string));
        names.extend(slot.spec.subscribe.iter().map(|s| s.topic.to_string()));
    }
    let mut topics = Vec::new();
    for topic in names {
        let length = match state.bus.length(&topic) {
            Ok(n) => n,
            Err(e) => return internal(e),
        };
        let mut subscriptions = Vec::new();
        for slot in state.registry.services() {
            let Some(sub) = slot.spec.subscribe.iter().find(|s| s.topic == topic) else {
                continue;
            };
            let backlog = match state.bus.backlog(&topic, slot.name()) {
                Ok(backlog) => backlog,
                Err(e) => return internal(e),
            };
            subscriptions.push(SubscriptionView {
                service: slot.name().to_string(),
                cursor: backlog.cursor,
                lag: backlog.lag,
                max_deliver: sub.max_deliver,
                dead_letters: backlog.dead_letters,
                dead_letter_topic: dead_letter_topic(&topic, slot.name()),
                counters: state.bus.metrics.subscription(&topic, slot.name()),
            });
        }
        topics.push(TopicView {
            published: state.bus.metrics.published_count(&topic),
            topic,
            length,
            subscriptions,
        });
    }
    Json(TopicsView { topics }).into_response()
}

/// The subscription named in the path, or a 404 saying it does not exist.
fn subscription(state: &AdminState, service: &str, topic: &str) -> Result<(), Box<Response>> {
    let subscribed = state
        .registry
        .get(service)
        .is_some_and(|slot| slot.spec.subscribe.iter().any(|s| s.topic == topic));
    if subscribed {
        Ok(())
    } else {
        Err(Box::new(
            problem(
                StatusCode::NOT_FOUND,
                format!("service {service:?} has no subscription to topic {topic:?}"),
            )
            .into_response(),
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /admin/subscriptions/{service}/{topic}/dead-letters?after=N&limit=M`.
pub(super) async fn dead_letters(
    State(state): State<AdminState>,
    Path((service, topic)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Response {
    if let Err(response) = subscription(&state, &service, &topic) {
        return *response;
    }
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    match state.bus.dead_letters(&topic, &service, page.after, limit) {
        Ok(letters) => Json(DeadLettersView {
            topic: dead_letter_topic(&topic, &service),
            dead_letters: letters,
        })
        .into_response(),
        Err(e) => internal(e),
    }
}

/// `POST /admin/subscriptions/{service}/{topic}/redrive`: every dead letter goes back to
/// this subscriber, ahead of the rest of its topic.
pub(super) async fn redrive(
    State(state): State<AdminState>,
    Path((service, topic)): Path<(String, String)>,
) -> Response {
    if let Err(response) = subscription(&state, &service, &topic) {
        return *response;
    }
    match state.bus.redrive(&topic, &service).await {
        Ok(redriven) => Json(RedriveView {
            service,
            topic,
            redriven,
        })
        .into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayQuery {
    from: u64,
}

/// `POST /admin/subscriptions/{service}/{topic}/replay?from=N`: the subscriber receives
/// every event from offset N again.
pub(super) async fn replay(
    State(state): State<AdminState>,
    Path((service, topic)): Path<(String, String)>,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "replay needs `?from=N`, the offset to deliver from (a whole number)",
        )
        .into_response();
    };
    if let Err(response) = subscription(&state, &service, &topic) {
        return *response;
    }
    match state.bus.replay(&topic, &service, query.from).await {
        Ok(()) => Json(ReplayView {
            service,
            topic,
            cursor: query.from,
        })
        .into_response(),
        Err(crate::store::StoreError::Conflict(why)) => {
            problem(StatusCode::BAD_REQUEST, why).into_response()
        }
        Err(e) => internal(e),
    }
}
