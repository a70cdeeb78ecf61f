//! A response kept in storage (an idempotency key's answer, a queued request's result):
//! status, headers and body, as JSON with the body in base64.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    pub(crate) status: u16,
    /// Headers whose values are text (others are not kept).
    pub(crate) headers: Vec<(String, String)>,
    /// Base64.
    pub(crate) body: String,
}

impl StoredResponse {
    pub(crate) fn of(response: &http::Response<Bytes>) -> StoredResponse {
        StoredResponse {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.to_string(), value.to_str().ok()?.to_string()))
                })
                .collect(),
            body: base64::engine::general_purpose::STANDARD.encode(response.body()),
        }
    }

    /// The response as it was stored.
    pub(crate) fn to_response(&self) -> http::Response<Bytes> {
        let body = base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .unwrap_or_default();
        let mut response = http::Response::new(Bytes::from(body));
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}
