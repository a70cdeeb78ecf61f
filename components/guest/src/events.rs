//! Publishing events (`microhost:platform/events`). Events published during an
//! invocation are delivered only if the invocation succeeds.

pub use crate::bindings::microhost::platform::events::PublishError;
use crate::bindings::microhost::platform::events::{self, PublishOptions};
use serde::Serialize;
use std::fmt;

/// Why an event was not published.
#[derive(Debug)]
pub enum Error {
    /// The host refused it: the topic is not in the manifest's `publishes`, or the topic,
    /// an option or the payload is malformed.
    Publish(PublishError),
    /// The value could not be encoded as JSON.
    Encode(serde_json::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Publish(
                PublishError::UndeclaredTopic(message) | PublishError::Invalid(message),
            ) => f.write_str(message),
            Error::Encode(e) => write!(f, "event data could not be encoded as JSON: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Publish(_) => None,
            Error::Encode(e) => Some(e),
        }
    }
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Error {
        Error::Publish(e)
    }
}

/// Publishes raw bytes to `topic`; returns the event id.
pub fn publish(topic: &str, data: &[u8]) -> Result<String, Error> {
    publish_with(topic, data, None, None)
}

/// Publishes bytes with an optional key and content type; returns the event id.
pub fn publish_with(
    topic: &str,
    data: &[u8],
    key: Option<&str>,
    content_type: Option<&str>,
) -> Result<String, Error> {
    let options = PublishOptions {
        key: key.map(str::to_string),
        content_type: content_type.map(str::to_string),
    };
    Ok(events::publish(topic, data, &options)?)
}

/// Publishes `value` as JSON (`content-type: application/json`), with an optional key.
pub fn publish_json<T: Serialize + ?Sized>(
    topic: &str,
    key: Option<&str>,
    value: &T,
) -> Result<String, Error> {
    let data = serde_json::to_vec(value).map_err(Error::Encode)?;
    publish_with(topic, &data, key, Some("application/json"))
}
