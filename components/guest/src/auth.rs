//! Passwords and tokens (`microhost:platform/auth`), done by the host; and the identity
//! the gateway verified for the current request.

use crate::Request;
use crate::bindings::microhost::platform::auth;
pub use crate::bindings::microhost::platform::auth::AuthError;
use std::fmt;

/// Why the host could not hash, verify or sign.
#[derive(Debug)]
pub struct Error(pub AuthError);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            AuthError::Invalid(message) | AuthError::Unavailable(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Error {
        Error(e)
    }
}

/// The verified subject of the request's bearer token (set by the gateway, or passed on
/// by the host for a service-to-service call). Clients cannot forge it: the host strips
/// these headers from incoming requests.
pub fn subject(req: &Request) -> Option<&str> {
    req.header("x-microhost-subject")
}

/// The verified subject, or a 401 problem (`this route needs a token`) when there is none.
pub fn require_subject(req: &Request) -> Result<&str, crate::Error> {
    subject(req).ok_or_else(|| crate::Error::unauthorized("this route needs a token"))
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

pub fn hash_password(password: &str) -> Result<String, Error> {
    Ok(auth::hash_password(password)?)
}

pub fn verify_password(password: &str, hash: &str) -> Result<bool, Error> {
    Ok(auth::verify_password(password, hash)?)
}

/// A signed token for `subject` with extra `claims`, valid for `ttl_seconds`.
pub fn issue_token(
    subject: &str,
    claims: &serde_json::Value,
    ttl_seconds: u32,
) -> Result<String, Error> {
    Ok(auth::issue_token(
        subject,
        &claims.to_string(),
        ttl_seconds,
    )?)
}
