//! Buffered HTTP on top of `wasi:http`: read the whole request, call the service, write
//! the whole response. Errors become RFC 9457 problem bodies, like the host's own.

use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::bindings::wasi::io::streams::{InputStream, StreamError};
use crate::page::PageRequest;
use crate::{Error, Service};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An incoming request, read whole.
#[derive(Debug, Clone)]
pub struct Request {
    /// Upper-case method name (`GET`, `POST`, ...).
    pub method: String,
    /// The path without the query string, as the client sent it.
    pub path: String,
    /// The raw query string, without the `?`.
    pub query: Option<String>,
    /// Header names are lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// A query parameter's raw value (no percent-decoding; enough for ids and numbers).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The path split into its non-empty segments.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The body parsed as JSON, or a 400 problem saying why it is not acceptable.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        if self.body.is_empty() {
            return Err(Error::bad_request(
                "request body is empty; expected a JSON object",
            ));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::bad_request(&format!("invalid JSON body: {e}")))
    }

    /// The page a list route is asked for (`?limit=N&after=ID`); see [`PageRequest`].
    pub fn page(&self) -> Result<PageRequest, Error> {
        PageRequest::from_request(self)
    }

    fn read(incoming: IncomingRequest) -> Result<Request, String> {
        let method = match incoming.method() {
            Method::Get => "GET".to_string(),
            Method::Head => "HEAD".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Connect => "CONNECT".to_string(),
            Method::Options => "OPTIONS".to_string(),
            Method::Trace => "TRACE".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Other(other) => other.to_ascii_uppercase(),
        };
        let path_with_query = incoming
            .path_with_query()
            .unwrap_or_else(|| "/".to_string());
        let (path, query) = match path_with_query.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path_with_query, None),
        };
        let headers = incoming.headers().entries();
        let body = incoming
            .consume()
            .map_err(|()| "request body was already consumed".to_string())?;
        let bytes = read_body(&body)?;
        drop(IncomingBody::finish(body));
        Ok(Request {
            method,
            path,
            query,
            headers,
            body: bytes,
        })
    }
}

fn read_body(body: &IncomingBody) -> Result<Vec<u8>, String> {
    let stream = body
        .stream()
        .map_err(|()| "request body stream was already taken".to_string())?;
    read_all(&stream).map_err(|e| format!("reading the request body failed: {e}"))
}

/// Reads a stream to its end.
pub(crate) fn read_all(stream: &InputStream) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
}

/// A response, written whole after the handler returns.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    pub fn json(status: u16, value: &impl Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(e) => Response::problem(
                500,
                "Internal Server Error",
                &format!("response could not be encoded as JSON: {e}"),
            ),
        }
    }

    /// An RFC 9457 problem body: `{"type","title","status","detail"}`.
    pub fn problem(status: u16, title: &str, detail: &str) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
        });
        Response::new(status)
            .with_header("content-type", "application/problem+json")
            .with_body(body.to_string().into_bytes())
    }

    pub fn not_found(detail: &str) -> Response {
        Response::problem(404, "Not Found", detail)
    }

    pub fn bad_request(detail: &str) -> Response {
        Response::problem(400, "Bad Request", detail)
    }

    /// 405 with the `Allow` header listing what the resource accepts.
    pub fn method_not_allowed(method: &str, allow: &str) -> Response {
        Response::problem(
            405,
            "Method Not Allowed",
            &format!("method {method:?} is not allowed here; allowed: {allow}"),
        )
        .with_header("allow", allow)
    }

    pub fn internal_error(detail: &str) -> Response {
        Response::problem(500, "Internal Server Error", detail)
    }

    /// The first value of a header, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The `detail` of a problem body.
    pub(crate) fn problem_detail(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        body.get("detail")?.as_str().map(str::to_string)
    }

    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn with_body(mut self, body: Vec<u8>) -> Response {
        self.body = body;
        self
    }

    fn write(self, out: ResponseOutparam) {
        let headers = match Fields::from_list(&self.headers) {
            Ok(fields) => fields,
            Err(e) => {
                let fallback = Response::internal_error(&format!(
                    "the service produced an invalid response header: {e:?}"
                ));
                return fallback.write(out);
            }
        };
        let response = OutgoingResponse::new(headers);
        if response.set_status_code(self.status).is_err() {
            return Response::internal_error(&format!(
                "the service produced an invalid status code {}",
                self.status
            ))
            .write(out);
        }
        let body = response
            .body()
            .expect("a new response's body is taken once");
        ResponseOutparam::set(out, Ok(response));
        {
            let stream = body.write().expect("a new body's stream is taken once");
            // `blocking-write-and-flush` accepts at most 4096 bytes per call.
            for chunk in self.body.chunks(4096) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    // The client went away; there is nobody left to answer.
                    return;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Reads the request, calls `S::handle`, writes the response (or the error's response).
/// Used by [`service!`](crate::service); call it directly only from a hand-written export.
pub fn serve<S: Service>(incoming: IncomingRequest, out: ResponseOutparam) {
    let response = match Request::read(incoming) {
        Ok(req) => S::handle(req).unwrap_or_else(Error::into_response),
        Err(detail) => Response::bad_request(&detail),
    };
    response.write(out);
}
