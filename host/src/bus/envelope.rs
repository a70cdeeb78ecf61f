//! The event envelope, shaped like CloudEvents: what a topic's log stores and what a
//! subscriber receives.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// Unique id (32 hex digits), assigned when published.
    pub(crate) id: String,
    /// `service@version` of the publisher.
    pub(crate) source: String,
    /// The topic (CloudEvents `type`).
    #[serde(rename = "type")]
    pub(crate) topic: String,
    /// RFC 3339, UTC, microseconds.
    pub(crate) time: String,
    /// Position in the topic's log; assigned at commit.
    #[serde(default)]
    pub(crate) offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) traceparent: Option<String>,
    /// The payload, base64 in JSON.
    #[serde(with = "data_base64")]
    pub(crate) data: Vec<u8>,
}

impl Envelope {
    /// A new event with a fresh id and the current time.
    pub(crate) fn new(source: String, topic: String, data: Vec<u8>) -> Envelope {
        use rand::RngCore as _;
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        Envelope {
            id: hex::encode(id),
            source,
            topic,
            time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            offset: 0,
            key: None,
            datacontenttype: None,
            traceparent: None,
            data,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("corrupt event in the log: {e}"))
    }
}

mod data_base64 {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let mut e = Envelope::new("a@1".into(), "t.x".into(), vec![0, 1, 2, 255]);
        e.key = Some("k".into());
        let back = Envelope::decode(&e.encode()).expect("decodes");
        assert_eq!(back, e);
        assert_eq!(e.id.len(), 32);
        assert!(e.time.ends_with('Z'));
    }
}
