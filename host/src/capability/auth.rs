//! `microhost:platform/auth`: password hashing and token issuing, done by the host
//! ([`crate::auth::Auth`]) so that keys never enter a guest and argon2 runs off the
//! guest's CPU budget.

use super::InvocationState;
use super::generated::microhost::platform::auth;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// Longest token lifetime a service may ask for (one week).
pub(crate) const MAX_TTL_SECS: u32 = 7 * 24 * 3600;

/// The host's token issuer and password hasher (every service has it).
pub(crate) type AuthGrant = Arc<crate::auth::Auth>;

pub(crate) struct AuthView<'a> {
    auth: &'a AuthGrant,
}

struct HasAuth;

impl HasData for HasAuth {
    type Data<'a> = AuthView<'a>;
}

pub(crate) fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    auth::add_to_linker::<_, HasAuth>(linker, |s: &mut InvocationState| AuthView {
        auth: &s.granted.auth,
    })
}

impl auth::Host for AuthView<'_> {
    async fn hash_password(
        &mut self,
        password: String,
    ) -> wasmtime::Result<Result<String, auth::AuthError>> {
        if password.len() > 1024 {
            return Ok(Err(auth::AuthError::Invalid(
                "a password may be at most 1024 bytes".to_string(),
            )));
        }
        Ok(self
            .auth
            .hash_password(password)
            .await
            .map_err(auth::AuthError::Unavailable))
    }

    async fn verify_password(
        &mut self,
        password: String,
        hash: String,
    ) -> wasmtime::Result<Result<bool, auth::AuthError>> {
        Ok(self
            .auth
            .verify_password(password, hash)
            .await
            .map_err(auth::AuthError::Invalid))
    }

    fn issue_token(
        &mut self,
        subject: String,
        claims: String,
        ttl_seconds: u32,
    ) -> wasmtime::Result<Result<String, auth::AuthError>> {
        if !(1..=MAX_TTL_SECS).contains(&ttl_seconds) {
            return Ok(Err(auth::AuthError::Invalid(format!(
                "ttl-seconds must be from 1 to {MAX_TTL_SECS}, got {ttl_seconds}"
            ))));
        }
        let extra = match serde_json::from_str::<serde_json::Value>(&claims) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                return Ok(Err(auth::AuthError::Invalid(
                    "claims must be a JSON object".to_string(),
                )));
            }
        };
        Ok(self
            .auth
            .issue(&subject, &extra, u64::from(ttl_seconds))
            .map_err(auth::AuthError::Invalid))
    }
}
