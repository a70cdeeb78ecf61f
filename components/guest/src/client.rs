//! Calling other services (and allowed outside hosts) with `wasi:http/outgoing-handler`.
//! A service is addressed as `http://<service>.internal/<path>`; the host serves the call
//! in-process, through the target's policies (cache, concurrency limit, circuit breaker,
//! retries, fallback), and passes on the caller's identity, request id and trace context.

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use serde::de::DeserializeOwned;

/// A response from another service, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("invalid JSON in reply: {e}"))
    }

    /// The `detail` of a problem body, or the body as text.
    pub fn detail(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Reply, String> {
    send("GET", url, None)
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<Reply, String> {
    send("POST", url, Some(body.to_string().into_bytes()))
}

/// Sends a request; `Err` means no response at all (refused, unreachable, timed out).
pub fn send(method: &str, url: &str, body: Option<Vec<u8>>) -> Result<Reply, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("unsupported URL {url:?}: use http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut headers = vec![];
    if body.is_some() {
        headers.push(("content-type".to_string(), b"application/json".to_vec()));
    }
    let fields = Fields::from_list(&headers).map_err(|e| format!("bad header: {e:?}"))?;
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        other => Method::Other(other.to_string()),
    };
    request
        .set_method(&method)
        .map_err(|()| "invalid method".to_string())?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "invalid scheme".to_string())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("invalid authority {authority:?}"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| format!("invalid path {path:?}"))?;
    let outgoing = request
        .body()
        .map_err(|()| "request body taken twice".to_string())?;
    let future =
        outgoing_handler::handle(request, None).map_err(|e| format!("request refused: {e:?}"))?;
    {
        let stream = outgoing
            .write()
            .map_err(|()| "request body stream taken twice".to_string())?;
        if let Some(body) = &body {
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("writing the request body failed: {e:?}"))?;
            }
        }
    }
    OutgoingBody::finish(outgoing, None)
        .map_err(|e| format!("finishing the request failed: {e:?}"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(format!("request failed: {code:?}")),
        Some(Err(())) => return Err("response already taken".to_string()),
        None => return Err("no response".to_string()),
    };
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| "response body taken twice".to_string())?;
    let bytes = {
        let stream = body
            .stream()
            .map_err(|()| "response stream taken twice".to_string())?;
        crate::http::read_all(&stream).map_err(|e| format!("reading the response failed: {e}"))?
    };
    drop(IncomingBody::finish(body));
    Ok(Reply {
        status,
        body: bytes,
    })
}
