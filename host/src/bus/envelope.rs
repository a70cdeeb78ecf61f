//! The event envelope: what a topic's log stores, what a subscriber receives, and what
//! leaves the host (admin API, dead letters), as a CloudEvents 1.0 event in the JSON
//! format (structured mode): `specversion`, `id`, `source` (`service@version`), `type`
//! (the topic), `time`, `datacontenttype`, the payload as `data` when it is JSON (and the
//! content type, if any, says JSON) or else as `data_base64`, and the extensions
//! `traceparent` (Distributed Tracing), `partitionkey` (Partitioning) and `offset` (the
//! event's position in its topic's log). Logs written before the envelope was a
//! CloudEvent (no `specversion`, the payload base64 in `data`, `key`) still decode.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// Unique id (32 hex digits), assigned when published.
    pub(crate) id: String,
    /// `service@version` of the publisher.
    pub(crate) source: String,
    /// The topic (CloudEvents `type`).
    pub(crate) topic: String,
    /// RFC 3339, UTC, microseconds.
    pub(crate) time: String,
    /// Position in the topic's log; assigned at commit.
    pub(crate) offset: u64,
    /// The partition key (CloudEvents `partitionkey`).
    pub(crate) key: Option<String>,
    pub(crate) datacontenttype: Option<String>,
    pub(crate) traceparent: Option<String>,
    /// The payload.
    pub(crate) data: Vec<u8>,
}

/// The CloudEvents version the envelope is.
pub(crate) const SPEC_VERSION: &str = "1.0";

/// The JSON form, as written; `key` and a base64 `data` only in logs from before.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    specversion: Option<std::borrow::Cow<'a, str>>,
    id: String,
    source: String,
    #[serde(rename = "type")]
    topic: String,
    time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partitionkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default)]
    offset: u64,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// Whether a payload of `content_type` is JSON (CloudEvents: an absent content type in
/// the JSON format means JSON).
fn says_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
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

    /// The payload as `data`: when it is JSON text exactly (no surrounding whitespace, so
    /// that it decodes to the same bytes) and its content type says JSON.
    fn json_data(&self) -> Option<&RawValue> {
        let text = std::str::from_utf8(&self.data).ok()?;
        let trimmed = text.trim_matches([' ', '\t', '\n', '\r']);
        if trimmed.len() != text.len() || !says_json(self.datacontenttype.as_deref()) {
            return None;
        }
        serde_json::from_str::<&RawValue>(text).ok()
    }

    /// The event as a CloudEvent in JSON (structured mode): what the log stores.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.encode()).expect("an envelope is JSON")
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let data = self.json_data();
        let wire = Wire {
            specversion: Some(SPEC_VERSION.into()),
            id: self.id.clone(),
            source: self.source.clone(),
            topic: self.topic.clone(),
            time: self.time.clone(),
            datacontenttype: self.datacontenttype.clone(),
            traceparent: self.traceparent.clone(),
            partitionkey: self.key.clone(),
            key: None,
            offset: self.offset,
            data,
            data_base64: (data.is_none() && !self.data.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&self.data)),
        };
        serde_json::to_vec(&wire).expect("an envelope always serializes")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope, String> {
        let corrupt = |e: &dyn std::fmt::Display| format!("corrupt event in the log: {e}");
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| corrupt(&e))?;
        let base64 = |text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| corrupt(&e))
        };
        let data = match (&wire.specversion, wire.data, &wire.data_base64) {
            (_, Some(_), Some(_)) => return Err(corrupt(&"both `data` and `data_base64`")),
            (None, Some(data), None) => {
                // Before CloudEvents: the payload was base64 in `data`.
                let text: String = serde_json::from_str(data.get()).map_err(|e| corrupt(&e))?;
                base64(&text)?
            }
            (Some(_), Some(data), None) => {
                match serde_json::from_str::<String>(data.get()) {
                    // A string `data` of a content type that is not JSON is the text itself.
                    Ok(text) if !says_json(wire.datacontenttype.as_deref()) => text.into_bytes(),
                    _ => data.get().as_bytes().to_vec(),
                }
            }
            (_, None, Some(text)) => base64(text)?,
            (_, None, None) => Vec::new(),
        };
        if let Some(version) = &wire.specversion
            && version != SPEC_VERSION
        {
            return Err(corrupt(&format!(
                "specversion {version:?} is not {SPEC_VERSION}"
            )));
        }
        Ok(Envelope {
            id: wire.id,
            source: wire.source,
            topic: wire.topic,
            time: wire.time,
            offset: wire.offset,
            key: wire.partitionkey.or(wire.key),
            datacontenttype: wire.datacontenttype,
            traceparent: wire.traceparent,
            data,
        })
    }
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Envelope, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let bytes = serde_json::to_vec(&value).map_err(serde::de::Error::custom)?;
        Envelope::decode(&bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_payload_is_data_anything_else_data_base64() {
        let mut e = Envelope::new(
            "order@0.1.0".into(),
            "order.created".into(),
            br#"{"id":1}"#.to_vec(),
        );
        let json = e.to_json();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "order.created");
        assert_eq!(json["data"], serde_json::json!({"id": 1}));
        assert!(json.get("data_base64").is_none());
        e.datacontenttype = Some("application/octet-stream".into());
        let json = e.to_json();
        assert_eq!(json["data_base64"], "eyJpZCI6MX0=");
        for data in [&b" 1"[..], b"not json", b"\xff"] {
            let mut e = Envelope::new("a@1".into(), "t.x".into(), data.to_vec());
            e.key = Some("k".into());
            assert!(e.to_json().get("data").is_none(), "{data:?}");
            assert_eq!(e.to_json()["partitionkey"], "k");
            assert_eq!(Envelope::decode(&e.encode()), Ok(e));
        }
    }

    #[test]
    fn logs_from_before_cloudevents_still_decode() {
        let old = br#"{"id":"1","source":"a@1","type":"t.x","time":"2026-01-01T00:00:00Z","offset":3,"key":"k","data":"AAEC"}"#;
        let e = Envelope::decode(old).expect("decodes");
        assert_eq!(
            (e.data.as_slice(), e.key.as_deref(), e.offset),
            (&[0u8, 1, 2][..], Some("k"), 3)
        );
        let text = br#"{"specversion":"1.0","id":"1","source":"a@1","type":"t.x","time":"2026-01-01T00:00:00Z","datacontenttype":"text/plain","data":"hi"}"#;
        assert_eq!(Envelope::decode(text).map(|e| e.data), Ok(b"hi".to_vec()));
    }

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
