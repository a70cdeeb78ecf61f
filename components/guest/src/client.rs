//! Calling other services (and allowed outside hosts) with `wasi:http/outgoing-handler`.
//! A service is addressed as `http://<service>.internal/<path>`; the host serves the call
//! in-process, through the target's policies (cache, concurrency limit, circuit breaker,
//! retries, fallback), and passes on the caller's identity, request id and trace context.
//!
//! ```ignore
//! let reply = client::Request::get("http://user.internal/internal/users/42")
//!     .header("accept", "application/json")
//!     .send()?;
//! let etag = reply.header("etag");
//! ```

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

/// Why a call got no usable answer.
#[derive(Debug)]
pub enum Error {
    /// The request could not be made as written (a URL, method or header the caller got
    /// wrong); a 500.
    Invalid(String),
    /// The request body could not be encoded as JSON; a 500.
    Encode(serde_json::Error),
    /// No response at all: refused, unreachable, timed out, or the exchange broke off;
    /// a 503 ("the user service is unavailable: ...").
    Unavailable { authority: String, detail: String },
    /// An answer the caller cannot use (see [`Reply::unexpected`]); a 503 with the
    /// answer's detail.
    Status {
        authority: String,
        status: u16,
        detail: String,
    },
    /// The answer's body is not the JSON the caller expected; a 500.
    Decode {
        authority: String,
        source: serde_json::Error,
    },
}

impl Error {
    /// The status a handler answers with when it passes this error on: 503 when the
    /// other side failed, 500 when this side did.
    pub fn status(&self) -> u16 {
        match self {
            Error::Unavailable { .. } | Error::Status { .. } => 503,
            Error::Invalid(_) | Error::Encode(_) | Error::Decode { .. } => 500,
        }
    }
}

/// How a message names the other side: `user service` for `user.internal`, else the host.
fn target(authority: &str) -> String {
    match authority.strip_suffix(".internal") {
        Some(service) => format!("{service} service"),
        None => format!("host {authority:?}"),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(message) => f.write_str(message),
            Error::Encode(e) => write!(f, "the request body could not be encoded as JSON: {e}"),
            Error::Unavailable { authority, detail }
            | Error::Status {
                authority, detail, ..
            } => {
                write!(f, "the {} is unavailable: {detail}", target(authority))
            }
            Error::Decode { authority, source } => write!(
                f,
                "invalid JSON in the reply of the {}: {source}",
                target(authority)
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Encode(e) | Error::Decode { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// A request to another service or host, built up and then sent with [`Request::send`].
#[derive(Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    /// A [`Request::json`] body that could not be encoded; reported by `send`.
    encode_error: Option<serde_json::Error>,
}

impl Request {
    /// A request with `method` (upper case: `GET`, `POST`, ...) to `url`
    /// (`http://<service>.internal/<path>` or an allowed `http(s)://` host).
    pub fn new(method: &str, url: impl Into<String>) -> Request {
        Request {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            encode_error: None,
        }
    }

    pub fn get(url: impl Into<String>) -> Request {
        Request::new("GET", url)
    }

    pub fn post(url: impl Into<String>) -> Request {
        Request::new("POST", url)
    }

    pub fn put(url: impl Into<String>) -> Request {
        Request::new("PUT", url)
    }

    pub fn delete(url: impl Into<String>) -> Request {
        Request::new("DELETE", url)
    }

    /// Adds a header (repeat the name for several values). The host drops `x-microhost-*`
    /// headers and sets its own; `wasi:http` refuses forbidden ones such as `host`.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// The body as raw bytes.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// The body as JSON, with `content-type: application/json` unless one is set.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Request {
        match serde_json::to_vec(value) {
            Ok(body) => self.body = Some(body),
            Err(e) => self.encode_error = Some(e),
        }
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            self.headers
                .push(("content-type".to_string(), b"application/json".to_vec()));
        }
        self
    }

    /// Sends the request and reads the whole answer. Any status is a [`Reply`]; `Err`
    /// means no answer at all, or a request that could not be made.
    pub fn send(self) -> Result<Reply, Error> {
        if let Some(e) = self.encode_error {
            return Err(Error::Encode(e));
        }
        let url = Url::parse(&self.url)?;
        let unavailable = |detail: String| Error::Unavailable {
            authority: url.authority.to_string(),
            detail,
        };
        let fields = Fields::new();
        for (name, value) in &self.headers {
            fields
                .append(name, value)
                .map_err(|e| Error::Invalid(format!("header {name:?} cannot be sent: {e:?}")))?;
        }
        let request = OutgoingRequest::new(fields);
        request
            .set_method(&method(&self.method))
            .map_err(|()| Error::Invalid(format!("invalid method {:?}", self.method)))?;
        request
            .set_scheme(Some(&url.scheme))
            .map_err(|()| Error::Invalid("invalid scheme".to_string()))?;
        request
            .set_authority(Some(url.authority))
            .map_err(|()| Error::Invalid(format!("invalid authority {:?}", url.authority)))?;
        request
            .set_path_with_query(Some(&url.path))
            .map_err(|()| Error::Invalid(format!("invalid path {:?}", url.path)))?;
        let outgoing = request.body().expect("a new request's body is taken once");
        let future = outgoing_handler::handle(request, None)
            .map_err(|e| unavailable(format!("request refused: {e:?}")))?;
        let written = {
            let stream = outgoing.write().expect("a new body's stream is taken once");
            // `blocking-write-and-flush` accepts at most 4096 bytes per call.
            self.body
                .iter()
                .flat_map(|body| body.chunks(4096))
                .try_for_each(|chunk| stream.blocking_write_and_flush(chunk))
        };
        if let Err(e) = written {
            // The host may have refused the request while it was being written (a body
            // over the caller's budget): its answer says why, better than the stream.
            drop(outgoing);
            future.subscribe().block();
            return Err(match future.get() {
                Some(Ok(Err(code))) => unavailable(format!("request failed: {code:?}")),
                _ => unavailable(format!("writing the request body failed: {e:?}")),
            });
        }
        OutgoingBody::finish(outgoing, None)
            .map_err(|e| unavailable(format!("finishing the request failed: {e:?}")))?;
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(unavailable(format!("request failed: {code:?}"))),
            Some(Err(())) => return Err(unavailable("response already taken".to_string())),
            None => return Err(unavailable("no response".to_string())),
        };
        let status = response.status();
        let headers = response.headers().entries();
        let body = response
            .consume()
            .expect("a new response's body is taken once");
        let bytes = {
            let stream = body.stream().expect("a new body's stream is taken once");
            crate::http::read_all(&stream)
                .map_err(|e| unavailable(format!("reading the response failed: {e}")))?
        };
        drop(IncomingBody::finish(body));
        Ok(Reply {
            status,
            headers,
            body: bytes,
            authority: url.authority.to_string(),
        })
    }
}

fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    }
}

/// The parts of a URL `wasi:http` takes separately.
#[derive(Debug)]
struct Url<'a> {
    scheme: Scheme,
    authority: &'a str,
    /// The path with its query, starting with `/`.
    path: String,
}

impl Url<'_> {
    fn parse(url: &str) -> Result<Url<'_>, Error> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(Error::Invalid(format!(
                "unsupported URL {url:?}: use http:// or https://"
            )));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(Error::Invalid(format!("URL {url:?} names no host")));
        }
        Ok(Url {
            scheme,
            authority,
            path,
        })
    }
}

/// An answer from another service, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header names are lower-case.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Who answered (`user.internal`), for error messages.
    authority: String,
}

impl Reply {
    /// The first value of a header, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|source| Error::Decode {
            authority: self.authority.clone(),
            source,
        })
    }

    /// The `detail` of a problem body, or the body as text.
    pub fn detail(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }

    /// The error for an answer the caller cannot use (a status it does not handle):
    /// a 503 saying the other side is unavailable, with this answer's detail.
    pub fn unexpected(&self) -> Error {
        Error::Status {
            authority: self.authority.clone(),
            status: self.status,
            detail: self.detail(),
        }
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Reply, Error> {
    Request::get(url).send()
}

/// `POST url` with a JSON body.
pub fn post_json<T: Serialize + ?Sized>(url: &str, body: &T) -> Result<Reply, Error> {
    Request::post(url).json(body).send()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let url = Url::parse("http://user.internal/internal/users/42?x=1").expect("valid");
        assert!(matches!(url.scheme, Scheme::Http));
        assert_eq!(url.authority, "user.internal");
        assert_eq!(url.path, "/internal/users/42?x=1");
        let bare = Url::parse("https://example.com").expect("valid");
        assert!(matches!(bare.scheme, Scheme::Https));
        assert_eq!(bare.path, "/");
        assert_eq!(
            Url::parse("https://example.com?q=1").expect("valid").path,
            "/?q=1"
        );
        for bad in ["ftp://x/", "user.internal/x", "http:///x"] {
            assert!(Url::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_failed_call_names_the_service_and_is_a_503() {
        let e = Error::Unavailable {
            authority: "product.internal".to_string(),
            detail: "request failed: ConnectionRefused".to_string(),
        };
        assert_eq!(e.status(), 503);
        assert_eq!(
            e.to_string(),
            "the product service is unavailable: request failed: ConnectionRefused"
        );
        let reply = Reply {
            status: 500,
            headers: vec![("etag".to_string(), b"\"1\"".to_vec())],
            body: br#"{"detail":"boom"}"#.to_vec(),
            authority: "api.example.com".to_string(),
        };
        assert_eq!(reply.header("ETag"), Some("\"1\""));
        assert_eq!(
            reply.unexpected().to_string(),
            "the host \"api.example.com\" is unavailable: boom"
        );
        assert_eq!(reply.json::<u8>().map_err(|e| e.status()).err(), Some(500));
    }
}
