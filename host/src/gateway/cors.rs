//! CORS for a route: the gateway answers preflights itself (before authentication, as
//! browsers send no credentials with them) and adds the `Access-Control-*` headers to
//! responses for allowed origins. Requests from other origins are still served, without
//! the headers, so the browser withholds the response from the page.

use crate::config::CorsSpec;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

fn allowed_origin<'a>(spec: &CorsSpec, origin: &'a str) -> Option<&'a str> {
    spec.allow_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        .then_some(origin)
}

/// `Access-Control-Allow-Origin`: `*` for any origin without credentials, else the
/// origin itself.
fn allow_origin_value(spec: &CorsSpec, origin: &str) -> Option<HeaderValue> {
    if spec.allow_origins.iter().any(|o| o == "*") && !spec.allow_credentials {
        Some(HeaderValue::from_static("*"))
    } else {
        HeaderValue::from_str(origin).ok()
    }
}

/// The answer to a preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`), or `None` if the request is not one.
pub(crate) fn preflight(
    spec: &CorsSpec,
    parts: &http::request::Parts,
) -> Option<http::Response<Bytes>> {
    if parts.method != Method::OPTIONS {
        return None;
    }
    let origin = parts.headers.get(header::ORIGIN)?.to_str().ok()?;
    let method = parts
        .headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)?
        .to_str()
        .ok()?;
    let refuse = |why: String| {
        let mut response = crate::problem::problem_bytes(
            StatusCode::FORBIDDEN,
            format!("CORS preflight refused: {why}"),
            serde_json::Map::new(),
        );
        vary(response.headers_mut());
        Some(response)
    };
    let Some(origin) = allowed_origin(spec, origin) else {
        return refuse(format!("origin {origin:?} is not allowed"));
    };
    if !spec.allow_methods.iter().any(|m| m == method) {
        return refuse(format!("method {method:?} is not allowed"));
    }
    let requested: Vec<String> = parts
        .headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if let Some(h) = requested
        .iter()
        .find(|h| !spec.allow_headers.iter().any(|a| a.eq_ignore_ascii_case(h)))
    {
        return refuse(format!("header {h:?} is not allowed"));
    }
    let mut response = http::Response::new(Bytes::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    if let Some(v) = allow_origin_value(spec, origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if let Ok(v) = HeaderValue::from_str(&spec.allow_methods.join(", ")) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Ok(v) = HeaderValue::from_str(&spec.allow_headers.join(", ")) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(spec.max_age_secs),
    );
    if spec.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    vary(headers);
    Some(response)
}

fn vary(headers: &mut HeaderMap) {
    headers.append(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
}

/// Adds the CORS headers of an actual request from `origin` to its response.
pub(crate) fn decorate(spec: &CorsSpec, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin.and_then(|o| o.to_str().ok()) else {
        return;
    };
    let Some(origin) = allowed_origin(spec, origin) else {
        return;
    };
    if let Some(v) = allow_origin_value(spec, origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if !spec.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&spec.expose_headers.join(", "))
    {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
    if spec.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}
