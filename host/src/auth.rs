//! Tokens and passwords, kept in the host: JWTs are signed and verified with a key that
//! never enters a guest; passwords are hashed with argon2id (`[auth.password]`) on
//! blocking threads behind a concurrency limit, and a hash to verify may cost no more
//! than a ceiling. Used by the gateway (verifying tokens on protected routes) and by
//! the `microhost:platform/auth` capability (issuing tokens, hashing passwords).
//!
//! The host signs its own tokens with HS256 (`kid` = [`HOST_KID`]). Tokens of other
//! issuers verify with keys from the manifest (`[[auth.key]]`: RSA, EC or Ed25519 PEM
//! public keys, or HMAC secrets from the environment) or a JWKS file, selected by the
//! token's `kid`. Each key pins its algorithm: a token whose header names another one is
//! refused, so an RSA public key can never be used as an HMAC secret.

use crate::config::{AuthSpec, HOST_KID, PasswordSpec};
use anyhow::Context as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// Name of the file in the data directory holding a generated signing secret.
pub(crate) const JWT_SECRET_FILE: &str = "jwt-secret";

/// A key that verifies other issuers' tokens.
pub(crate) struct VerifyKey {
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
    key: DecodingKey,
    issuer: String,
    audience: String,
}

/// The verification keys `[auth]` names: `[[auth.key]]` entries and the JWKS file, read
/// relative to `base_dir`. Errors name the file and the key.
pub(crate) fn load_keys(spec: &AuthSpec, base_dir: &Path) -> anyhow::Result<Vec<VerifyKey>> {
    let mut keys = Vec::new();
    for k in &spec.keys {
        let alg = Algorithm::from_str(&k.alg)
            .map_err(|_| anyhow::anyhow!("[auth] key {:?}: unknown alg {:?}", k.kid, k.alg))?;
        let key = match (&k.public_key, &k.secret_env) {
            (Some(file), _) => {
                let path = base_dir.join(file);
                let pem = std::fs::read(&path)
                    .with_context(|| format!("[auth] key {:?}: failed to read {path:?}", k.kid))?;
                let parsed = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                };
                parsed.map_err(|e| {
                    anyhow::anyhow!(
                        "[auth] key {:?}: {path:?} is not a PEM public key for {}: {e}",
                        k.kid,
                        k.alg
                    )
                })?
            }
            (None, Some(var)) => {
                let secret = std::env::var(var).map_err(|_| {
                    anyhow::anyhow!(
                        "[auth] key {:?}: environment variable {var:?} is not set",
                        k.kid
                    )
                })?;
                anyhow::ensure!(
                    secret.len() >= 32,
                    "[auth] key {:?}: the secret in {var:?} must be at least 32 bytes, got {}",
                    k.kid,
                    secret.len()
                );
                DecodingKey::from_secret(secret.as_bytes())
            }
            (None, None) => anyhow::bail!("[auth] key {:?}: no public_key or secret_env", k.kid),
        };
        keys.push(VerifyKey {
            kid: k.kid.clone(),
            alg,
            key,
            issuer: k.issuer.clone().unwrap_or_else(|| spec.issuer.clone()),
            audience: k.audience.clone().unwrap_or_else(|| spec.audience.clone()),
        });
    }
    if let Some(file) = &spec.jwks {
        let path = base_dir.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("[auth] jwks: failed to read {path:?}"))?;
        let set: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("[auth] jwks: {path:?} is not JSON"))?;
        let entries = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("[auth] jwks: {path:?} has no `keys` array"))?;
        for jwk in entries {
            match jwks_key(jwk, spec) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(why) => tracing::warn!(path = %path.display(), "JWKS: {why}"),
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for key in &keys {
        anyhow::ensure!(
            seen.insert(key.kid.as_str()),
            "[auth]: key id {:?} is used twice",
            key.kid
        );
    }
    Ok(keys)
}

/// A JWKS entry as a verification key: `alg` as given, else inferred from the key type
/// (RSA: RS256, P-256: ES256, P-384: ES384, Ed25519: EdDSA). `Ok(None)` for keys that
/// cannot verify tokens here (encryption keys, no `kid`, unsupported algorithms or
/// curves, short secrets): identity providers publish those too, so they are skipped.
fn jwks_key(jwk: &serde_json::Value, spec: &AuthSpec) -> Result<Option<VerifyKey>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
    let jwk: Jwk = match serde_json::from_value(jwk.clone()) {
        Ok(jwk) => jwk,
        Err(e) => return Err(format!("skipped a key that is not a usable JWK: {e}")),
    };
    let Some(kid) = jwk
        .common
        .key_id
        .clone()
        .filter(|k| !k.is_empty() && k != HOST_KID)
    else {
        return Err(format!(
            "skipped a key without a `kid` (or with {HOST_KID:?})"
        ));
    };
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(given), _) => {
            let name = serde_json::to_value(given)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            match Algorithm::from_str(&name) {
                Ok(alg) => alg,
                Err(_) => return Ok(None),
            }
        }
        (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
        (None, AlgorithmParameters::EllipticCurve(p)) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err(format!("skipped key {kid:?}: its curve is not supported")),
        },
        (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
        (None, AlgorithmParameters::OctetKey(_)) => {
            return Err(format!(
                "skipped key {kid:?}: a symmetric key must name its `alg`"
            ));
        }
    };
    if let AlgorithmParameters::OctetKey(p) = &jwk.algorithm {
        use base64::Engine as _;
        let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p.value.trim_end_matches('='))
            .map_or(0, |k| k.len());
        if len < 32 {
            return Err(format!(
                "skipped key {kid:?}: a secret must be at least 32 bytes"
            ));
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("skipped key {kid:?}: {e}"))?;
    Ok(Some(VerifyKey {
        kid,
        alg,
        key,
        issuer: spec
            .jwks_issuer
            .clone()
            .unwrap_or_else(|| spec.issuer.clone()),
        audience: spec
            .jwks_audience
            .clone()
            .unwrap_or_else(|| spec.audience.clone()),
    }))
}

/// The bearer token of `Authorization` (the scheme is case-insensitive).
pub(crate) fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    // `Bearer SP token` (RFC 6750): the token as sent, no space trimmed away.
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Claims the host sets itself; a guest may not pass them in `claims`.
const RESERVED: [&str; 6] = ["sub", "iss", "aud", "exp", "iat", "nbf"];

/// A verified caller: the token's subject and its claims.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Identity {
    pub(crate) subject: String,
    /// Every claim of the token (registered ones included), as JSON.
    pub(crate) claims: Map<String, Value>,
}

impl Identity {
    /// Who this is across issuers (`iss`, newline, `sub`): subjects of different
    /// issuers never share a rate-limit bucket or cache entries.
    pub(crate) fn key(&self) -> String {
        let issuer = self.claims.get("iss").and_then(Value::as_str).unwrap_or("");
        format!("{issuer}\n{}", self.subject)
    }
}

/// Token settings and keys, and the password-hashing pool.
pub(crate) struct Auth {
    issuer: String,
    audience: String,
    /// Accepted clock difference when checking `exp` and `nbf`, in seconds.
    leeway_secs: u64,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Other issuers' keys, by `kid`.
    keys: HashMap<String, VerifyKey>,
    /// argon2id's cost for new hashes (`[auth.password]`).
    params: argon2::Params,
    /// The most a hash to verify may cost, per parameter: the configured cost or
    /// argon2's default, whichever is higher. A hash's cost is in its PHC string, which
    /// a guest hands in: without a ceiling, `m=4194304` would have the host allocate
    /// 4 GiB for one call.
    ceiling: argon2::Params,
    /// Bounds concurrent argon2 hashes (by default one per core; each takes its
    /// `memory_kib` and a core for tens of ms). A permit goes with its hash onto the
    /// blocking thread, so it is held until the hash ends even when the caller has gone
    /// away.
    hashing: Arc<Semaphore>,
}

impl Auth {
    /// HS256 with `secret`; `issuer` and `audience` go into every token and are required
    /// of every token presented.
    pub(crate) fn new(secret: &[u8], issuer: &str, audience: &str, leeway_secs: u64) -> Auth {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Auth {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            leeway_secs,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            keys: HashMap::new(),
            params: argon2::Params::DEFAULT,
            ceiling: argon2::Params::DEFAULT,
            hashing: Arc::new(Semaphore::new(cores)),
        }
    }

    /// The issuer and verifier a manifest's `[auth]` describes: tokens signed with
    /// `secret`, verified with it and the keys it names, passwords hashed with its
    /// `[auth.password]` settings.
    pub(crate) fn for_manifest(
        secret: &[u8],
        manifest: &crate::config::Manifest,
    ) -> anyhow::Result<Auth> {
        let spec = &manifest.auth;
        Auth::new(secret, &spec.issuer, &spec.audience, spec.leeway_secs)
            .with_keys(load_keys(spec, &manifest.base_dir)?)
            .with_password(&spec.password)
    }

    /// Hashes passwords as `[auth.password]` says, that many at a time.
    pub(crate) fn with_password(mut self, spec: &PasswordSpec) -> anyhow::Result<Auth> {
        let params = |m: u32, t: u32, p: u32| {
            argon2::Params::new(m, t, p, None)
                .map_err(|e| anyhow::anyhow!("[auth.password]: m = {m} KiB, t = {t}, p = {p}: {e}"))
        };
        let default = argon2::Params::DEFAULT;
        self.params = params(spec.memory_kib, spec.iterations, spec.parallelism)?;
        self.ceiling = params(
            spec.memory_kib.max(default.m_cost()),
            spec.iterations.max(default.t_cost()),
            spec.parallelism.max(default.p_cost()),
        )?;
        if let Some(max) = spec.max_concurrent_hashes {
            self.hashing = Arc::new(Semaphore::new(usize::try_from(max)?));
        }
        Ok(self)
    }

    /// Adds keys that verify other issuers' tokens.
    pub(crate) fn with_keys(mut self, keys: Vec<VerifyKey>) -> Auth {
        self.keys
            .extend(keys.into_iter().map(|key| (key.kid.clone(), key)));
        self
    }

    /// The signing secret: `configured` if given, else `<data_dir>/jwt-secret`, which is
    /// generated (random, mode 0600) on first start so tokens survive restarts.
    pub(crate) fn load_secret(
        configured: Option<&str>,
        data_dir: &Path,
    ) -> anyhow::Result<Vec<u8>> {
        if let Some(secret) = configured {
            anyhow::ensure!(
                secret.len() >= 32,
                "the JWT secret must be at least 32 bytes, got {}",
                secret.len()
            );
            return Ok(secret.as_bytes().to_vec());
        }
        let path = data_dir.join(JWT_SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(secret) if secret.trim().len() >= 32 => Ok(secret.trim().as_bytes().to_vec()),
            Ok(_) => anyhow::bail!("{path:?} holds a JWT secret shorter than 32 bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use rand::RngCore as _;
                let mut bytes = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                let secret = hex::encode(bytes);
                std::fs::create_dir_all(data_dir)
                    .with_context(|| format!("failed to create {data_dir:?}"))?;
                crate::store::write_private(&path, &secret)
                    .with_context(|| format!("failed to write {path:?}"))?;
                tracing::info!(path = %path.display(), "generated a JWT signing secret");
                Ok(secret.into_bytes())
            }
            Err(e) => Err(e).with_context(|| format!("failed to read {path:?}")),
        }
    }

    /// Signs a token for `subject` with `extra` claims, valid for `ttl_secs`.
    pub(crate) fn issue(
        &self,
        subject: &str,
        extra: &Map<String, Value>,
        ttl_secs: u64,
    ) -> Result<String, String> {
        if subject.is_empty() {
            return Err("the subject must not be empty".to_string());
        }
        if let Some(reserved) = extra.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(format!(
                "claim {reserved:?} is set by the host, not by the service"
            ));
        }
        let now = unix_now();
        let mut claims = extra.clone();
        claims.insert("sub".into(), subject.into());
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl_secs).into());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(HOST_KID.to_string());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| format!("signing the token failed: {e}"))
    }

    /// Verifies a token: the key its `kid` names (the host's own without one), with
    /// that key's algorithm only, whatever the header says; `exp` (required), `nbf`,
    /// `iss` and `aud`, within the leeway.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("invalid token: {e}"))?;
        let (key, alg, issuer, audience) = match header.kid.as_deref() {
            None | Some(HOST_KID) => (
                &self.decoding,
                Algorithm::HS256,
                &self.issuer,
                &self.audience,
            ),
            Some(kid) => match self.keys.get(kid) {
                Some(k) => (&k.key, k.alg, &k.issuer, &k.audience),
                None => return Err(format!("invalid token: unknown key id {kid:?}")),
            },
        };
        if header.alg != alg {
            return Err(format!(
                "invalid token: signed with {:?}, but its key only verifies {alg:?}",
                header.alg
            ));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_secs;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| format!("invalid token: {e}"))?;
        // jsonwebtoken checks `nbf` only when it reads as a u64 and ignores it otherwise
        // (a string, a negative or huge number): a time the token names but the check
        // skips is no token of ours.
        if let Some(nbf) = data.claims.get("nbf")
            && !nbf
                .as_f64()
                .is_some_and(|n| n.is_finite() && n >= 0.0 && n < u64::MAX as f64)
        {
            return Err(format!("invalid token: `nbf` {nbf} is not a NumericDate"));
        }
        let subject = data
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or("invalid token: `sub` is not a string")?
            .to_string();
        Ok(Identity {
            subject,
            claims: data.claims,
        })
    }

    /// An argon2id PHC string for `password`, computed on a blocking thread.
    pub(crate) async fn hash_password(&self, password: String) -> Result<String, String> {
        let params = self.params.clone();
        self.on_hashing_pool(move || {
            use argon2::password_hash::{PasswordHasher as _, SaltString, rand_core::OsRng};
            let salt = SaltString::generate(&mut OsRng);
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| format!("hashing failed: {e}"))
        })
        .await
    }

    /// Whether `password` matches `hash` (a PHC string), checked on a blocking thread
    /// with the hash's own parameters, unless they cost more than the ceiling.
    pub(crate) async fn verify_password(
        &self,
        password: String,
        hash: String,
    ) -> Result<bool, String> {
        use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
        let parsed = PasswordHash::new(&hash).map_err(|e| format!("not a password hash: {e}"))?;
        let cost = argon2::Params::try_from(&parsed)
            .map_err(|e| format!("not an argon2 password hash: {e}"))?;
        let ceiling = &self.ceiling;
        for (name, value, max) in [
            ("m (KiB)", cost.m_cost(), ceiling.m_cost()),
            ("t", cost.t_cost(), ceiling.t_cost()),
            ("p", cost.p_cost(), ceiling.p_cost()),
        ] {
            if value > max {
                return Err(format!(
                    "the hash's argon2 {name} = {value} is over the host's ceiling of {max} \
                     (the higher of [auth.password] and argon2's default)"
                ));
            }
        }
        self.on_hashing_pool(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|e| format!("not a password hash: {e}"))?;
            Ok(argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    /// Runs argon2 work on a blocking thread, at most one per core at a time.
    async fn on_hashing_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let permit = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "password hashing is shut down".to_string())?;
        // Dropping this future does not stop the blocking thread: the permit must
        // live as long as the hash does, not as long as the caller waits.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| format!("password hashing failed: {e}"))?
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_holds_its_permit_after_its_caller_goes_away() -> anyhow::Result<()> {
        let a = Arc::new(auth());
        let all = a.hashing.available_permits();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let hashing = a.clone();
        let caller = tokio::spawn(async move {
            hashing
                .on_hashing_pool(move || {
                    let _ = finished.recv();
                    Ok(())
                })
                .await
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.hashing.available_permits() == all {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the hash never started"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The caller goes away (a client that disconnected); the hash goes on, and so
        // does its hold on the limit.
        caller.abort();
        let _ = caller.await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(a.hashing.available_permits(), all - 1, "released early");
        finish.send(())?;
        while a.hashing.available_permits() != all {
            anyhow::ensure!(std::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn verify(auth: &Auth, password: &str, hash: &str) -> Result<bool, String> {
        auth.verify_password(password.to_string(), hash.to_string())
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passwords_hash_with_the_configured_cost_and_old_hashes_still_verify()
    -> anyhow::Result<()> {
        let cheap = auth().with_password(&PasswordSpec {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent_hashes: Some(3),
        })?;
        assert_eq!(cheap.hashing.available_permits(), 3);
        let hash = cheap
            .hash_password("correct horse".into())
            .await
            .map_err(anyhow::Error::msg)?;
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert_eq!(verify(&cheap, "correct horse", &hash).await, Ok(true));
        assert_eq!(verify(&cheap, "wrong", &hash).await, Ok(false));
        // A hash made with the defaults verifies on the cheap host, and the other way.
        let default = auth();
        let made = default
            .hash_password("battery".into())
            .await
            .map_err(anyhow::Error::msg)?;
        assert!(
            made.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{made}"
        );
        assert_eq!(verify(&cheap, "battery", &made).await, Ok(true));
        assert_eq!(verify(&default, "correct horse", &hash).await, Ok(true));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_that_costs_more_than_the_ceiling_is_refused_unhashed() -> anyhow::Result<()> {
        // The parameters of a PHC string are the caller's word: 4 GiB, or 1000 passes.
        let a = auth();
        let salt = "c29tZXNhbHRzb21lc2FsdA";
        let digest = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY";
        for (params, named) in [
            ("m=4194304,t=2,p=1", "m (KiB) = 4194304"),
            ("m=19456,t=1000,p=1", "t = 1000"),
        ] {
            let hash = format!("$argon2id$v=19${params}${salt}${digest}");
            let refused = a.verify_password("x".into(), hash).await;
            let why = refused.err().unwrap_or_default();
            assert!(
                why.contains(named) && why.contains("ceiling"),
                "{params}: {why}"
            );
        }
        assert_eq!(
            a.hashing.available_permits(),
            std::thread::available_parallelism().map_or(2, |n| n.get()),
            "refused before taking a permit"
        );
        // A host configured above the defaults verifies up to its own cost.
        let dear = auth().with_password(&PasswordSpec {
            memory_kib: 32 * 1024,
            iterations: 3,
            ..PasswordSpec::default()
        })?;
        let hash = dear
            .hash_password("pw".into())
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!(
            dear.verify_password("pw".into(), hash.clone()).await,
            Ok(true)
        );
        let why = a
            .verify_password("pw".into(), hash)
            .await
            .err()
            .unwrap_or_default();
        assert!(why.contains("m (KiB) = 32768"), "{why}");
        Ok(())
    }

    #[test]
    fn bearer_takes_the_token_as_sent() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value).expect("a valid header"),
            );
            bearer(&headers).map(str::to_string)
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("bearer abc").as_deref(), Some("abc"));
        assert_eq!(
            with("Bearer  abc").as_deref(),
            Some(" abc"),
            "not trimmed: it fails to verify"
        );
        assert_eq!(with("Bearer ").as_deref(), None);
        assert_eq!(with("Basic abc").as_deref(), None);
    }

    fn auth() -> Auth {
        Auth::new(&[7u8; 32], "microhost", "microhost", 30)
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() -> Result<(), String> {
        let a = auth();
        let mut extra = Map::new();
        extra.insert("email".into(), "a@b.c".into());
        let token = a.issue("user-1", &extra, 60)?;
        let id = a.verify(&token)?;
        assert_eq!(id.subject, "user-1");
        assert_eq!(id.claims["email"], "a@b.c");
        Ok(())
    }

    /// Found by the `jwt` fuzz target: without serde_json's `float_roundtrip`, a number
    /// claim read back from the token could be the neighbouring float.
    #[test]
    fn number_claims_verify_as_issued() -> Result<(), String> {
        let a = auth();
        for value in [8.406091369043545e-286, 2.6736263826513667e-269, 0.1, 1e300] {
            let mut extra = Map::new();
            extra.insert("n".into(), value.into());
            let id = a.verify(&a.issue("user-1", &extra, 60)?)?;
            assert_eq!(id.claims["n"].as_f64(), Some(value));
        }
        Ok(())
    }

    #[test]
    fn tokens_from_elsewhere_are_refused() -> Result<(), String> {
        let a = auth();
        let other = Auth::new(&[8u8; 32], "microhost", "microhost", 30);
        let token = other.issue("user-1", &Map::new(), 60)?;
        assert!(a.verify(&token).is_err(), "wrong key");
        let wrong_aud = Auth::new(&[7u8; 32], "microhost", "someone-else", 30);
        assert!(
            a.verify(&wrong_aud.issue("u", &Map::new(), 60)?).is_err(),
            "wrong audience"
        );
        let wrong_iss = Auth::new(&[7u8; 32], "elsewhere", "microhost", 30);
        assert!(
            a.verify(&wrong_iss.issue("u", &Map::new(), 60)?).is_err(),
            "wrong issuer"
        );
        // alg "none": header {"alg":"none"}, no signature.
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            base64_url(
                format!(
                    r#"{{"sub":"u","iss":"microhost","aud":"microhost","exp":{}}}"#,
                    unix_now() + 60
                )
                .as_bytes()
            )
        );
        assert!(a.verify(&none).is_err(), "alg none");
        let mut flipped = a.issue("u", &Map::new(), 60)?.into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            a.verify(&String::from_utf8_lossy(&flipped)).is_err(),
            "flipped byte"
        );
        Ok(())
    }

    #[test]
    fn expiry_is_enforced_beyond_the_leeway() -> Result<(), String> {
        let strict = Auth::new(&[7u8; 32], "microhost", "microhost", 0);
        let mut claims = Map::new();
        claims.insert("sub".into(), "u".into());
        claims.insert("iss".into(), "microhost".into());
        claims.insert("aud".into(), "microhost".into());
        claims.insert("exp".into(), (unix_now() - 10).into());
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .map_err(|e| e.to_string())?;
        assert!(strict.verify(&expired).is_err());
        claims.remove("exp");
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .map_err(|e| e.to_string())?;
        assert!(strict.verify(&no_exp).is_err(), "exp is required");
        Ok(())
    }

    /// Found by the `jwt` fuzz target: an `nbf` jsonwebtoken cannot read as a u64 was
    /// skipped, so a token not valid for 10^164 seconds verified.
    #[test]
    fn an_unreadable_not_before_is_refused() -> Result<(), String> {
        let a = Auth::new(&[7u8; 32], "microhost", "microhost", 30);
        let mut claims = Map::new();
        claims.insert("sub".into(), "u".into());
        claims.insert("iss".into(), "microhost".into());
        claims.insert("aud".into(), "microhost".into());
        claims.insert("exp".into(), (unix_now() + 600).into());
        let sign = |claims: &Map<String, Value>| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                claims,
                &EncodingKey::from_secret(&[7u8; 32]),
            )
            .map_err(|e| e.to_string())
        };
        for nbf in [json!(1.2e164), json!(-5), json!("0"), json!(null)] {
            claims.insert("nbf".into(), nbf.clone());
            let refused = a.verify(&sign(&claims)?).err().unwrap_or_default();
            assert!(refused.contains("nbf"), "nbf {nbf}: {refused:?}");
        }
        claims.insert("nbf".into(), (unix_now() + 3600).into());
        assert!(a.verify(&sign(&claims)?).is_err(), "not yet valid");
        claims.insert("nbf".into(), (unix_now() - 1).into());
        a.verify(&sign(&claims)?)?;
        Ok(())
    }

    #[test]
    fn reserved_claims_cannot_be_set_by_services() {
        let mut extra = Map::new();
        extra.insert("exp".into(), 1.into());
        assert!(auth().issue("u", &extra, 60).is_err());
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
