//! Publishing events (`microhost:platform/events`). Events published during an
//! invocation are delivered only if the invocation succeeds.

use crate::bindings::microhost::platform::events::{self, PublishError, PublishOptions};
use serde::Serialize;

/// Publishes raw bytes to `topic`; returns the event id.
pub fn publish(topic: &str, data: &[u8]) -> Result<String, String> {
    publish_with(topic, data, None, None)
}

/// Publishes bytes with an optional key and content type; returns the event id.
pub fn publish_with(
    topic: &str,
    data: &[u8],
    key: Option<&str>,
    content_type: Option<&str>,
) -> Result<String, String> {
    let options = PublishOptions {
        key: key.map(str::to_string),
        content_type: content_type.map(str::to_string),
    };
    events::publish(topic, data, &options).map_err(describe)
}

/// Publishes `value` as JSON (`content-type: application/json`), with an optional key.
pub fn publish_json<T: Serialize>(
    topic: &str,
    key: Option<&str>,
    value: &T,
) -> Result<String, String> {
    let data = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    publish_with(topic, &data, key, Some("application/json"))
}

/// A readable message for a publish error.
pub fn describe(e: PublishError) -> String {
    match e {
        PublishError::UndeclaredTopic(msg) | PublishError::Invalid(msg) => msg,
    }
}
