//! RFC 9457 problem responses (`application/problem+json`), the one shape of every
//! error body the host sends, from the edge, the dispatcher and the admin API alike.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;

/// A problem response body: `{"type","title","status","detail", ...extra}`.
pub(crate) fn problem(
    status: StatusCode,
    detail: impl Into<String>,
) -> http::Response<Full<Bytes>> {
    problem_with(status, detail, serde_json::Map::new())
}

/// A problem response with extra members (e.g. `service`, `version`).
pub(crate) fn problem_with(
    status: StatusCode,
    detail: impl Into<String>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> http::Response<Full<Bytes>> {
    problem_bytes(status, detail, extra).map(Full::new)
}

/// [`problem_with`], with the body as plain bytes.
pub(crate) fn problem_bytes(
    status: StatusCode,
    detail: impl Into<String>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> http::Response<Bytes> {
    let mut body = serde_json::Map::new();
    body.insert("type".into(), "about:blank".into());
    body.insert(
        "title".into(),
        status.canonical_reason().unwrap_or("Error").into(),
    );
    body.insert("status".into(), status.as_u16().into());
    body.insert("detail".into(), detail.into().into());
    body.extend(extra);
    let bytes = serde_json::Value::Object(body).to_string();
    let mut response = http::Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
