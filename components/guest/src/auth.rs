//! Passwords and tokens (`microhost:platform/auth`), done by the host; and the identity
//! the gateway verified for the current request.

use crate::Request;
use crate::bindings::microhost::platform::auth::{self, AuthError};

/// The verified subject of the request's bearer token (set by the gateway, or passed on
/// by the host for a service-to-service call). Clients cannot forge it: the host strips
/// these headers from incoming requests.
pub fn subject(req: &Request) -> Option<&str> {
    req.header("x-microhost-subject")
}

/// The verified token's claims (JSON object), if any.
pub fn claims(req: &Request) -> Option<serde_json::Value> {
    req.header("x-microhost-claims")
        .and_then(|c| serde_json::from_str(c).ok())
}

/// The service that made this request, when it came from another service.
pub fn calling_service(req: &Request) -> Option<&str> {
    req.header("x-microhost-caller")
}

pub fn hash_password(password: &str) -> Result<String, String> {
    auth::hash_password(password).map_err(describe)
}

pub fn verify_password(password: &str, hash: &str) -> Result<bool, String> {
    auth::verify_password(password, hash).map_err(describe)
}

/// A signed token for `subject` with extra `claims`, valid for `ttl_seconds`.
pub fn issue_token(
    subject: &str,
    claims: &serde_json::Value,
    ttl_seconds: u32,
) -> Result<String, String> {
    auth::issue_token(subject, &claims.to_string(), ttl_seconds).map_err(describe)
}

fn describe(e: AuthError) -> String {
    match e {
        AuthError::Invalid(m) | AuthError::Unavailable(m) => m,
    }
}
