//! `microhost:platform/auth`: password hashing and token issuing, done by the host
//! ([`crate::auth::Auth`]) so that keys never enter a guest and argon2 runs off the
//! guest's CPU budget.

use super::InvocationState;
use super::generated::microhost::platform::auth;
use crate::config::ServiceSpec;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// Longest token lifetime a service may ask for (one week).
pub(crate) const MAX_TTL_SECS: u32 = 7 * 24 * 3600;

/// The host's password hasher (every service has it) and token issuer (only services
/// whose manifest entry says `auth = { issue_tokens = true }`: a token is the host's
/// word for who a caller is).
#[derive(Clone)]
pub(crate) struct AuthGrant {
    auth: Arc<crate::auth::Auth>,
    service: String,
    issue_tokens: bool,
}

impl AuthGrant {
    pub(crate) fn new(spec: &ServiceSpec, auth: Arc<crate::auth::Auth>) -> AuthGrant {
        AuthGrant {
            auth,
            service: spec.name.to_string(),
            issue_tokens: spec.auth.issue_tokens,
        }
    }
}

pub(crate) struct AuthView<'a> {
    grant: &'a AuthGrant,
}

struct HasAuth;

impl HasData for HasAuth {
    type Data<'a> = AuthView<'a>;
}

pub(crate) fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    auth::add_to_linker::<_, HasAuth>(linker, |s: &mut InvocationState| AuthView {
        grant: &s.granted.auth,
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
            .grant
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
            .grant
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
        if !self.grant.issue_tokens {
            tracing::warn!(service = %self.grant.service, "token issuing refused: not granted");
            return Ok(Err(auth::AuthError::Invalid(format!(
                "service {:?} may not issue tokens: its manifest entry has no \
                 `auth = {{ issue_tokens = true }}`",
                self.grant.service
            ))));
        }
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
            .grant
            .auth
            .issue(&subject, &extra, u64::from(ttl_seconds))
            .map_err(auth::AuthError::Invalid))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_spec::spec;
    use super::auth::Host as _;
    use super::*;

    fn host_auth() -> Arc<crate::auth::Auth> {
        Arc::new(crate::auth::Auth::new(
            &[7u8; 32],
            "microhost",
            "microhost",
            30,
        ))
    }

    #[test]
    fn only_a_granted_service_issues_tokens() -> anyhow::Result<()> {
        let auth = host_auth();
        let denied = AuthGrant::new(&spec(""), auth.clone());
        let refused = AuthView { grant: &denied }.issue_token("ada".into(), "{}".into(), 60)?;
        match refused {
            Err(auth::AuthError::Invalid(why)) => {
                assert!(why.contains("\"orders\" may not issue tokens"), "{why}")
            }
            other => panic!("issued without the grant: {other:?}"),
        }
        let granted = AuthGrant::new(&spec("auth = { issue_tokens = true }"), auth.clone());
        let token = AuthView { grant: &granted }
            .issue_token("ada".into(), "{}".into(), 60)?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(
            auth.verify(&token).map_err(anyhow::Error::msg)?.subject,
            "ada"
        );
        Ok(())
    }
}
