//! The one error type of guest code: what a handler returns with `?`, and the response
//! it becomes. A ready response (a 4xx, or any status) is one kind of error among others.

use crate::{Response, auth, client, events, kv};
use std::fmt;

/// Why a handler did not produce its normal response. Every helper's error converts into
/// it with `From`, so handlers use `?` throughout; [`Error::into_response`] turns it into
/// what the client sees: [`Error::Response`] as it is, a failed service call as a 503,
/// anything else as a 500 problem body whose `detail` is this error's message.
#[derive(Debug)]
pub enum Error {
    /// Answer with this response as it is: a 4xx the handler decided on (see
    /// [`Error::bad_request`] and its siblings), or any other status.
    Response(Response),
    /// The key-value store failed, or a stored value is not the JSON expected.
    Kv(kv::Error),
    /// Publishing an event failed.
    Publish(events::Error),
    /// A call to another service got no usable answer.
    Call(client::Error),
    /// The host's password or token functions failed.
    Auth(auth::Error),
    /// Encoding or decoding JSON failed.
    Json(serde_json::Error),
    /// Anything else; the message is the 500's detail.
    Other(String),
}

impl Error {
    /// A ready problem response (`{"type","title","status","detail"}`) with any status.
    pub fn problem(status: u16, title: &str, detail: &str) -> Error {
        Error::Response(Response::problem(status, title, detail))
    }

    /// 400 Bad Request.
    pub fn bad_request(detail: &str) -> Error {
        Error::Response(Response::bad_request(detail))
    }

    /// 401 Unauthorized.
    pub fn unauthorized(detail: &str) -> Error {
        Error::problem(401, "Unauthorized", detail)
    }

    /// 403 Forbidden.
    pub fn forbidden(detail: &str) -> Error {
        Error::problem(403, "Forbidden", detail)
    }

    /// 404 Not Found.
    pub fn not_found(detail: &str) -> Error {
        Error::Response(Response::not_found(detail))
    }

    /// 405 Method Not Allowed, with the `Allow` header listing what the resource accepts.
    pub fn method_not_allowed(method: &str, allow: &str) -> Error {
        Error::Response(Response::method_not_allowed(method, allow))
    }

    /// 409 Conflict.
    pub fn conflict(detail: &str) -> Error {
        Error::problem(409, "Conflict", detail)
    }

    /// 422 Unprocessable Content.
    pub fn unprocessable(detail: &str) -> Error {
        Error::problem(422, "Unprocessable Content", detail)
    }

    /// An error with only a message: a 500 whose detail is `message`.
    pub fn other(message: impl Into<String>) -> Error {
        Error::Other(message.into())
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Error::Response(response) => response.status,
            Error::Call(e) => e.status(),
            _ => 500,
        }
    }

    /// The response the client sees.
    pub fn into_response(self) -> Response {
        match self {
            Error::Response(response) => response,
            Error::Call(e) if e.status() == 503 => {
                Response::problem(503, "Service Unavailable", &e.to_string())
            }
            other => Response::internal_error(&other.to_string()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Response(response) => match response.problem_detail() {
                Some(detail) => f.write_str(&detail),
                None => write!(f, "answered with status {}", response.status),
            },
            Error::Kv(e) => e.fmt(f),
            Error::Publish(e) => e.fmt(f),
            Error::Call(e) => e.fmt(f),
            Error::Auth(e) => e.fmt(f),
            Error::Json(e) => write!(f, "invalid JSON: {e}"),
            Error::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Kv(e) => Some(e),
            Error::Publish(e) => Some(e),
            Error::Call(e) => Some(e),
            Error::Auth(e) => Some(e),
            Error::Json(e) => Some(e),
            Error::Response(_) | Error::Other(_) => None,
        }
    }
}

impl From<Error> for Response {
    fn from(e: Error) -> Response {
        e.into_response()
    }
}

impl From<Response> for Error {
    fn from(response: Response) -> Error {
        Error::Response(response)
    }
}

impl From<kv::Error> for Error {
    fn from(e: kv::Error) -> Error {
        Error::Kv(e)
    }
}

/// For code that uses a [`kv::Bucket`] directly.
impl From<kv::StoreError> for Error {
    fn from(e: kv::StoreError) -> Error {
        Error::Kv(e.into())
    }
}

impl From<events::Error> for Error {
    fn from(e: events::Error) -> Error {
        Error::Publish(e)
    }
}

impl From<client::Error> for Error {
    fn from(e: client::Error) -> Error {
        Error::Call(e)
    }
}

impl From<auth::Error> for Error {
    fn from(e: auth::Error) -> Error {
        Error::Auth(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Json(e)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::Other(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::Other(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: &Response) -> serde_json::Value {
        serde_json::from_slice(&response.body).expect("a problem body is JSON")
    }

    #[test]
    fn a_ready_response_is_answered_as_it_is() {
        let response = Error::bad_request("field \"x\" is missing").into_response();
        assert_eq!(response.status, 400);
        assert_eq!(body(&response)["title"], "Bad Request");
        assert_eq!(body(&response)["detail"], "field \"x\" is missing");
        let teapot = Error::from(Response::text(418, "short and stout")).into_response();
        assert_eq!(teapot.status, 418);
        assert_eq!(teapot.body, b"short and stout");
    }

    #[test]
    fn anything_else_is_a_500_problem_with_the_message() {
        let response = Error::other("user \"x\" is missing").into_response();
        assert_eq!(response.status, 500);
        assert_eq!(
            response.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(
            body(&response),
            serde_json::json!({
                "type": "about:blank", "title": "Internal Server Error", "status": 500,
                "detail": "user \"x\" is missing",
            })
        );
        let json = serde_json::from_str::<u8>("x").expect_err("not a number");
        assert_eq!(Error::from(json).into_response().status, 500);
        let kv = Error::from(kv::StoreError::AccessDenied);
        assert_eq!(body(&kv.into_response())["detail"], "access denied");
    }

    #[test]
    fn the_message_of_a_problem_response_is_its_detail() {
        assert_eq!(Error::not_found("no \"x\"").to_string(), "no \"x\"");
        assert_eq!(
            Error::from(Response::new(204)).to_string(),
            "answered with status 204"
        );
    }
}
