//! The host's token settings (`[auth]`), the verification keys of other issuers
//! (`[[auth.key]]`), password hashing (`[auth.password]`) and the default rate limit of
//! auth routes (`[auth] rate_limit`), each validating its own values.

use super::policy::RateLimitSpec;
use super::{FieldError, in_range};
use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::path::PathBuf;

/// The `kid` of the tokens the host signs (tokens without a `kid` are the host's too);
/// no `[[auth.key]]` may take it. It lives here, the lowest layer, so that `auth` and
/// the manifest share it without the manifest reaching up into `auth`.
pub const HOST_KID: &str = "microhost";

/// Token settings of the host (`[auth]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSpec {
    /// `iss` of issued tokens, required of presented ones.
    pub issuer: String,
    /// `aud` of issued tokens, required of presented ones.
    pub audience: String,
    /// Accepted clock difference for `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// A JWKS file (`{"keys": [...]}`) of more verification keys, selected by `kid`.
    pub jwks: Option<PathBuf>,
    /// Required `iss` of tokens signed by JWKS keys [default: `issuer`].
    pub jwks_issuer: Option<String>,
    /// Required `aud` of tokens signed by JWKS keys [default: `audience`].
    pub jwks_audience: Option<String>,
    /// More verification keys (`[[auth.key]]`), selected by the token's `kid`.
    #[serde(rename = "key")]
    pub keys: Vec<KeySpec>,
    /// How passwords are hashed (`[auth.password]`).
    pub password: PasswordSpec,
    /// The rate limit of auth routes: every route of a service granted `auth = {
    /// issue_tokens = true }` (the login service, where passwords are checked and
    /// tokens signed) that sets no `policy.rate_limit` of its own. `false` turns it off.
    pub rate_limit: AuthRateLimit,
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            issuer: "microhost".to_string(),
            audience: "microhost".to_string(),
            leeway_secs: 30,
            jwks: None,
            jwks_issuer: None,
            jwks_audience: None,
            keys: Vec::new(),
            password: PasswordSpec::default(),
            rate_limit: AuthRateLimit::default(),
        }
    }
}

/// argon2id for `hash-password` (and the most `verify-password` will spend on a hash),
/// and how many hashes run at once. The defaults are the argon2 crate's, OWASP's
/// second recommendation: 19 MiB, 2 passes, 1 lane (tens of milliseconds of one core).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordSpec {
    /// Memory of one hash, in KiB (at least 8 per lane).
    pub memory_kib: u32,
    /// Passes over that memory.
    pub iterations: u32,
    /// Lanes; the host computes them on one thread, so more lanes cost more time, not
    /// more cores.
    pub parallelism: u32,
    /// Hashes and verifications running at once (each on a blocking thread); more
    /// wait their turn. `None`: one per core.
    pub max_concurrent_hashes: Option<u32>,
}

impl Default for PasswordSpec {
    fn default() -> Self {
        PasswordSpec {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent_hashes: None,
        }
    }
}

impl PasswordSpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("password.parallelism", self.parallelism, 1..=64)?;
        in_range(
            "password.memory_kib",
            self.memory_kib,
            u64::from(8 * self.parallelism)..=1024 * 1024,
        )
        .map_err(|e| e.note("argon2 needs at least 8 KiB per lane of `parallelism`"))?;
        in_range("password.iterations", self.iterations, 1..=100)?;
        if let Some(max) = self.max_concurrent_hashes {
            in_range("password.max_concurrent_hashes", max, 1..=1024)?;
        }
        Ok(())
    }
}

/// `[auth] rate_limit`: a table like `{ per_second = 5, burst = 10 }` (the default, per
/// client IP), or `false` for none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRateLimit(pub Option<RateLimitSpec>);

impl Default for AuthRateLimit {
    fn default() -> Self {
        AuthRateLimit(Some(RateLimitSpec {
            per_second: 5,
            burst: Some(10),
            key: Default::default(),
        }))
    }
}

impl<'de> Deserialize<'de> for AuthRateLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AuthRateLimit;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`false` or a table like { per_second = 5, burst = 10 }")
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<AuthRateLimit, E> {
                if on {
                    return Err(E::custom(
                        "`true` says nothing: write the limit, like { per_second = 5, burst = 10 }, \
                         or leave the field out for that default",
                    ));
                }
                Ok(AuthRateLimit(None))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AuthRateLimit, A::Error> {
                let spec =
                    RateLimitSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(AuthRateLimit(Some(spec)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A key that verifies tokens of another issuer (or of a legacy secret). Tokens name it
/// by `kid`, and must be signed with its `alg`: the algorithm is pinned per key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub kid: String,
    /// `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`
    /// (with `public_key`) or `HS256`, `HS384`, `HS512` (with `secret_env`).
    pub alg: String,
    /// A PEM public key file, relative to the manifest.
    pub public_key: Option<PathBuf>,
    /// The environment variable holding an HMAC secret (never the secret itself).
    pub secret_env: Option<String>,
    /// Required `iss` of its tokens [default: `[auth] issuer`].
    pub issuer: Option<String>,
    /// Required `aud` of its tokens [default: `[auth] audience`].
    pub audience: Option<String>,
}

impl AuthSpec {
    /// Checks every key, and that no two share a `kid`.
    pub(super) fn validate(&self) -> Result<(), FieldError> {
        self.password.validate()?;
        if let Some(limit) = &self.rate_limit.0 {
            limit.check("rate_limit.per_second", "rate_limit.burst")?;
        }
        let mut kids = HashSet::new();
        for key in &self.keys {
            key.validate()?;
            if !kids.insert(key.kid.as_str()) {
                return Err(FieldError::new(
                    "key.kid",
                    format!("{:?} is listed twice", key.kid),
                ));
            }
        }
        Ok(())
    }
}

impl KeySpec {
    fn validate(&self) -> Result<(), FieldError> {
        if self.kid.is_empty() || self.kid == HOST_KID {
            return Err(FieldError::new(
                "key.kid",
                format!(
                    "{:?} cannot be used: give each key a non-empty id other than {HOST_KID:?}",
                    self.kid
                ),
            ));
        }
        let hmac = match self.alg.as_str() {
            "HS256" | "HS384" | "HS512" => true,
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384"
            | "EdDSA" => false,
            other => {
                return Err(FieldError::new(
                    "key.alg",
                    format!(
                        "key {:?}: {other:?} is not a supported signing algorithm",
                        self.kid
                    ),
                ));
            }
        };
        match (hmac, &self.public_key, &self.secret_env) {
            (true, None, Some(_)) | (false, Some(_), None) => Ok(()),
            (true, _, _) => Err(FieldError::new(
                "key.secret_env",
                format!(
                    "key {:?}: {} needs `secret_env` (the variable holding the secret) and no `public_key`",
                    self.kid, self.alg
                ),
            )),
            (false, _, _) => Err(FieldError::new(
                "key.public_key",
                format!(
                    "key {:?}: {} needs `public_key` (a PEM file) and no `secret_env`",
                    self.kid, self.alg
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{GOOD, parse};

    #[test]
    fn password_hashing_takes_argon2s_defaults_and_checks_each_field() -> anyhow::Result<()> {
        let m = parse(GOOD)?;
        assert_eq!(
            m.auth.password,
            PasswordSpec {
                memory_kib: 19456,
                iterations: 2,
                parallelism: 1,
                max_concurrent_hashes: None,
            }
        );
        let with = |table: &str| parse(&format!("[auth.password]\n{table}\n{GOOD}"));
        let m = with("memory_kib = 65536\niterations = 3\nmax_concurrent_hashes = 4")?;
        assert_eq!(m.auth.password.memory_kib, 65536);
        assert_eq!(m.auth.password.iterations, 3);
        assert_eq!(m.auth.password.max_concurrent_hashes, Some(4));
        let cases = [
            (
                "memory_kib = 0",
                "[auth] field `password.memory_kib`: must be from 8 to 1048576, got 0 (argon2 needs",
            ),
            (
                "memory_kib = 16\nparallelism = 4",
                "`password.memory_kib`: must be from 32 to 1048576, got 16",
            ),
            (
                "memory_kib = 2000000",
                "`password.memory_kib`: must be from 8 to 1048576, got 2000000",
            ),
            (
                "iterations = 0",
                "`password.iterations`: must be from 1 to 100, got 0",
            ),
            (
                "parallelism = 65",
                "`password.parallelism`: must be from 1 to 64, got 65",
            ),
            (
                "max_concurrent_hashes = 0",
                "`password.max_concurrent_hashes`: must be from 1 to 1024, got 0",
            ),
        ];
        for (table, reason) in cases {
            let msg = with(table).expect_err(table).to_string();
            assert!(msg.contains("registry/microhost.toml"), "{msg}");
            assert!(msg.contains(reason), "{table}: {msg}");
        }
        let msg = with("memory = 1").expect_err("unknown field").to_string();
        assert!(msg.contains("memory") && msg.contains("line"), "{msg}");
        Ok(())
    }

    const LOGIN: &str = r#"
        [[service]]
        name = "user"
        route = "/api/users"
        component = { path = "user/0.1.0.wasm", version = "0.1.0" }
        auth = { issue_tokens = true }
    "#;

    #[test]
    fn auth_routes_get_the_default_rate_limit_unless_they_set_their_own() -> anyhow::Result<()> {
        let limit = |m: &crate::config::Manifest, name: &str| {
            m.services
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.policy.rate_limit.clone())
        };
        let m = parse(&format!("{GOOD}{LOGIN}"))?;
        let default = AuthRateLimit::default().0;
        assert_eq!(limit(&m, "user"), default, "the login service");
        assert_eq!(
            default.as_ref().map(|l| (l.per_second, l.burst())),
            Some((5, 10))
        );
        assert_eq!(limit(&m, "product"), None, "a service without the grant");

        let own = format!("{GOOD}{LOGIN}policy = {{ rate_limit = {{ per_second = 50 }} }}\n");
        let m = parse(&own)?;
        assert_eq!(limit(&m, "user").map(|l| l.per_second), Some(50));

        let with = |auth: &str| parse(&format!("[auth]\n{auth}\n{GOOD}{LOGIN}"));
        let m = with("rate_limit = { per_second = 2, burst = 4, key = \"subject\" }")?;
        let set = limit(&m, "user");
        assert_eq!(
            set.as_ref().map(|l| (l.per_second, l.burst())),
            Some((2, 4))
        );
        assert_eq!(
            set.map(|l| l.key),
            Some(crate::config::RateLimitKey::Subject)
        );
        assert_eq!(
            limit(&with("rate_limit = false")?, "user"),
            None,
            "turned off"
        );

        for (auth, reason) in [
            (
                "rate_limit = { per_second = 0 }",
                "[auth] field `rate_limit.per_second`: must be at least 1, got 0",
            ),
            ("rate_limit = true", "`true` says nothing"),
            ("rate_limit = 5", "`false` or a table"),
            ("rate_limit = { per_secnd = 5 }", "per_secnd"),
        ] {
            let msg = with(auth).expect_err(auth).to_string();
            assert!(msg.contains(reason), "{auth}: {msg}");
        }
        Ok(())
    }
}
