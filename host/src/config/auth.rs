//! The host's token settings (`[auth]`) and the verification keys of other issuers
//! (`[[auth.key]]`), each validating its own values.

use super::FieldError;
use serde::Deserialize;
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
        }
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
