//! The deployment manifest (`registry/microhost.toml`): one `[[service]]` entry per
//! service. Parsed strictly (unknown fields are errors) and validated before the host
//! starts; every error names the file, the service and the field.

mod policy;

pub use policy::{
    CacheSpec, ConcurrencySpec, CorsSpec, FallbackSpec, HeaderOps, PolicySpec, RateLimitKey,
    RateLimitSpec, RetrySpec, TransformSpec,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub admin: AdminSpec,
    #[serde(default)]
    pub auth: AuthSpec,
    /// The directory relative component paths are resolved against (the manifest's
    /// own directory); not a TOML field.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was read from (`None` for `serve --component`); `microhost apply`
    /// and `serve --watch` read it again.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// One service.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Lower-case letters, digits and `-`, starting with a letter; at most 63 characters.
    pub name: String,
    /// Path prefix the gateway routes to this service, e.g. `/api/products`. Matching
    /// is by whole path segments; the longest matching prefix wins.
    pub route: String,
    pub component: ComponentSpec,
    #[serde(default)]
    pub limits: Limits,
    /// Values the service reads through `wasi:config/store`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Topics the service may publish to; publishing elsewhere is an error the guest sees.
    #[serde(default)]
    pub publishes: Vec<String>,
    /// Topics the service receives events from (through `microhost:platform/subscriber`).
    #[serde(default)]
    pub subscribe: Vec<SubscriptionSpec>,
    /// Requests to the route need a valid bearer token (except the `public` ones).
    #[serde(default)]
    pub protected: bool,
    /// Exceptions to `protected`: `"METHOD /path"` or `"/path"` (any method); a path
    /// ending in `/*` also matches everything below it.
    #[serde(default)]
    pub public: Vec<String>,
    /// Services this one may call at `http://<service>.internal/...`.
    #[serde(default)]
    pub calls: Vec<String>,
    /// Outside hosts this service may send HTTP requests to.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// How callers' circuit breakers treat this service.
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// How versions are checked before and while they serve.
    #[serde(default)]
    pub health: HealthSpec,
    /// When a canary version is rolled back automatically.
    #[serde(default)]
    pub canary: CanarySpec,
    /// The route's gateway policies (`[service.policy]`): rate limit, load shedding,
    /// retries, cache, fallback, CORS, transformation.
    #[serde(default)]
    pub policy: PolicySpec,
}

/// Health checks of a service's versions. A new version must pass one (its
/// `microhost:platform/lifecycle.health` export if it has one, then the `smoke` request
/// if configured) before it takes traffic. Running versions are checked every
/// `interval_ms`; after `unhealthy_after` failed checks in a row the service is taken
/// out of routing (503) until a check passes again.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSpec {
    /// Milliseconds between checks of running versions; 0 turns periodic checks off.
    pub interval_ms: u64,
    pub unhealthy_after: u32,
    /// A path answered with a `GET` that must return 2xx (its writes and events are
    /// discarded), e.g. `/api/products?limit=1`.
    pub smoke: Option<String>,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            interval_ms: 10_000,
            unhealthy_after: 2,
            smoke: None,
        }
    }
}

/// Automatic rollback of a canary: over each window of `window_ms`, once the canary has
/// served `min_requests`, it is rolled back if its failure rate (5xx, traps, timeouts)
/// exceeds the stable version's by more than `error_margin_pct` percentage points.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CanarySpec {
    pub window_ms: u64,
    pub min_requests: u64,
    pub error_margin_pct: u32,
}

impl Default for CanarySpec {
    fn default() -> Self {
        CanarySpec {
            window_ms: 60_000,
            min_requests: 20,
            error_margin_pct: 10,
        }
    }
}

/// Circuit breaking of requests to a service (from the edge and from other services):
/// after `failures` consecutive failed calls (trap, timeout, 500, 502, 504), or when
/// `error_rate_pct` % or more of at least `min_requests` calls in a `window_ms` window
/// failed, the breaker opens and calls fail fast with 503 (or the route's fallback) for
/// `open_ms`; then one probe call is let through: success closes it, failure opens it
/// again.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    pub failures: u32,
    pub open_ms: u64,
    /// 0 (the default) turns the error-rate rule off.
    pub error_rate_pct: u32,
    pub min_requests: u32,
    pub window_ms: u64,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            failures: 5,
            open_ms: 5_000,
            error_rate_pct: 0,
            min_requests: 20,
            window_ms: 10_000,
        }
    }
}

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

/// A parsed `public` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicRule {
    /// `None` matches any method.
    pub method: Option<String>,
    pub path: String,
    /// The path ended in `/*`: everything below it matches too.
    pub below: bool,
}

impl PublicRule {
    pub fn parse(rule: &str) -> Result<PublicRule, String> {
        let (method, path) = match rule.split_once(' ') {
            Some((m, p)) => (Some(m.trim()), p.trim()),
            None => (None, rule.trim()),
        };
        if let Some(m) = method
            && (m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()))
        {
            return Err(format!(
                "{rule:?}: the method must be upper-case, like \"GET /path\""
            ));
        }
        if !path.starts_with('/') {
            return Err(format!("{rule:?}: the path must start with '/'"));
        }
        let (path, below) = match path.strip_suffix("/*") {
            Some(p) => (if p.is_empty() { "/" } else { p }, true),
            None => (path, false),
        };
        Ok(PublicRule {
            method: method.map(str::to_string),
            path: path.to_string(),
            below,
        })
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        if path == self.path {
            return true;
        }
        self.below
            && path
                .strip_prefix(self.path.trim_end_matches('/'))
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// One subscription: every event of `topic` is delivered to the service, in order.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    pub topic: String,
    /// Deliveries of one event before it moves to the dead-letter topic.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Delay before the first retry, in milliseconds; doubles on every further retry.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Longest delay between retries, in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_max_deliver() -> u32 {
    5
}

fn default_backoff_ms() -> u64 {
    200
}

fn default_backoff_max_ms() -> u64 {
    30_000
}

impl SubscriptionSpec {
    /// The delay before delivery attempt `attempt + 1`, after `attempt` failures.
    pub fn backoff(&self, attempt: u32) -> std::time::Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(32);
        std::time::Duration::from_millis(
            self.backoff_ms
                .saturating_mul(factor)
                .min(self.backoff_max_ms),
        )
    }
}

/// Which component version serves the service at start-up.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    /// Path of the `.wasm` file, relative to the manifest's directory.
    pub path: PathBuf,
    /// Version label, e.g. `0.1.0`; shown in `x-microhost-service`.
    pub version: String,
}

/// Per-service resource limits.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory of one instance, in MiB.
    pub memory_mib: u32,
    /// Wall-clock time one request may take, in milliseconds (CPU included).
    pub timeout_ms: u64,
    /// Largest request body the gateway accepts for this service, in KiB.
    pub max_body_kib: u64,
    /// HTTP requests one instance may serve before it is dropped. 1 (the default): a
    /// fresh instance for every request. More trades isolation for speed: a request may
    /// see memory a previous request of the same version left behind (never its
    /// effects: each request's writes and events are its own, and an instance that
    /// failed is never reused).
    pub instance_reuse: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            instance_reuse: 1,
            timeout_ms: 10_000,
            max_body_kib: 1024,
        }
    }
}

/// Admin API settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// Bearer token of the admin API. `MICROHOST_ADMIN_TOKEN` overrides it; prefer the
    /// environment over committing a token.
    pub token: Option<String>,
}

/// A manifest that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("failed to read manifest {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid manifest {path:?}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid manifest {path:?}: [auth] field `{field}`: {reason}")]
    Auth {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    #[error("invalid manifest {path:?}: service {service:?}: field `{field}`: {reason}")]
    Field {
        path: PathBuf,
        service: String,
        field: &'static str,
        reason: String,
    },
}

/// The `kid` of the tokens the host signs (tokens without a `kid` are the host's too);
/// no `[[auth.key]]` may take it. Here, the lowest layer, so `auth` and the manifest share it.
pub const HOST_KID: &str = "microhost";

/// Most memory a service may ask for, in MiB (the runtime's pool is sized for it).
pub const MAX_MEMORY_MIB: u32 = 1024;
/// Longest request timeout, in milliseconds (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Most requests one instance may serve.
pub const MAX_INSTANCE_REUSE: u32 = 100_000;
/// Largest request body limit, in KiB (1 GiB).
pub const MAX_BODY_KIB: u64 = 1024 * 1024;

impl Manifest {
    /// Reads, parses and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut manifest = Manifest::from_toml(&text, path, base_dir)?;
        manifest.path = Some(path.to_path_buf());
        Ok(manifest)
    }

    /// Parses and validates manifest text; `path` is only used in messages.
    pub fn from_toml(
        text: &str,
        path: &Path,
        base_dir: PathBuf,
    ) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        manifest.base_dir = base_dir;
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// A manifest with one service, `app`, serving `component` on `/` with default
    /// limits (for `microhost serve --component FILE`).
    pub fn single_component(component: &Path) -> Result<Manifest, ManifestError> {
        let path = component.to_string_lossy();
        let text = format!(
            "[[service]]\nname = \"app\"\nroute = \"/\"\ncomponent = {{ path = {}, version = \"local\" }}\n",
            toml::Value::String(path.into_owned())
        );
        let base = std::env::current_dir().unwrap_or_default();
        Manifest::from_toml(&text, component, base)
    }

    /// The component file of `service`, resolved against the manifest's directory.
    pub fn component_path(&self, service: &ServiceSpec) -> PathBuf {
        self.base_dir.join(&service.component.path)
    }

    fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let mut kids = HashSet::new();
        for key in &self.auth.keys {
            let fail = |field: &'static str, reason: String| ManifestError::Auth {
                path: path.to_path_buf(),
                field,
                reason,
            };
            if key.kid.is_empty() || key.kid == HOST_KID {
                return Err(fail(
                    "key.kid",
                    format!(
                        "{:?} cannot be used: give each key a non-empty id other than {:?}",
                        key.kid, HOST_KID
                    ),
                ));
            }
            if !kids.insert(key.kid.as_str()) {
                return Err(fail("key.kid", format!("{:?} is listed twice", key.kid)));
            }
            let hmac = match key.alg.as_str() {
                "HS256" | "HS384" | "HS512" => true,
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384"
                | "EdDSA" => false,
                other => {
                    return Err(fail(
                        "key.alg",
                        format!(
                            "key {:?}: {other:?} is not a supported signing algorithm",
                            key.kid
                        ),
                    ));
                }
            };
            match (hmac, &key.public_key, &key.secret_env) {
                (true, None, Some(_)) | (false, Some(_), None) => {}
                (true, _, _) => {
                    return Err(fail(
                        "key.secret_env",
                        format!(
                            "key {:?}: {} needs `secret_env` (the variable holding the secret) and no `public_key`",
                            key.kid, key.alg
                        ),
                    ));
                }
                (false, _, _) => {
                    return Err(fail(
                        "key.public_key",
                        format!(
                            "key {:?}: {} needs `public_key` (a PEM file) and no `secret_env`",
                            key.kid, key.alg
                        ),
                    ));
                }
            }
        }
        let mut names = HashSet::new();
        let mut routes = HashSet::new();
        for service in &self.services {
            let fail = |field: &'static str, reason: String| ManifestError::Field {
                path: path.to_path_buf(),
                service: service.name.clone(),
                field,
                reason,
            };
            if let Err(reason) = check_service_name(&service.name) {
                return Err(fail("name", reason));
            }
            if !names.insert(service.name.as_str()) {
                return Err(fail(
                    "name",
                    "another service has the same name".to_string(),
                ));
            }
            if let Err(reason) = check_route(&service.route) {
                return Err(fail("route", reason));
            }
            if !routes.insert(service.route.as_str()) {
                return Err(fail(
                    "route",
                    format!(
                        "{:?} is already the route of another service",
                        service.route
                    ),
                ));
            }
            if let Err(reason) = check_version(&service.component.version) {
                return Err(fail("component.version", reason));
            }
            if service.component.path.as_os_str().is_empty() {
                return Err(fail("component.path", "must not be empty".to_string()));
            }
            let mut published = HashSet::new();
            for topic in &service.publishes {
                check_topic(topic).map_err(|reason| fail("publishes", reason))?;
                if !published.insert(topic) {
                    return Err(fail(
                        "publishes",
                        format!("topic {topic:?} is listed twice"),
                    ));
                }
            }
            let mut subscribed = HashSet::new();
            for sub in &service.subscribe {
                check_topic(&sub.topic).map_err(|reason| fail("subscribe.topic", reason))?;
                if !subscribed.insert(&sub.topic) {
                    return Err(fail(
                        "subscribe.topic",
                        format!("topic {:?} is subscribed twice", sub.topic),
                    ));
                }
                if !(1..=1000).contains(&sub.max_deliver) {
                    return Err(fail(
                        "subscribe.max_deliver",
                        format!("must be from 1 to 1000, got {}", sub.max_deliver),
                    ));
                }
                if !(1..=MAX_TIMEOUT_MS).contains(&sub.backoff_ms) {
                    return Err(fail(
                        "subscribe.backoff_ms",
                        format!("must be from 1 to {MAX_TIMEOUT_MS}, got {}", sub.backoff_ms),
                    ));
                }
                if sub.backoff_max_ms < sub.backoff_ms {
                    return Err(fail(
                        "subscribe.backoff_max_ms",
                        format!(
                            "must be at least backoff_ms ({}), got {}",
                            sub.backoff_ms, sub.backoff_max_ms
                        ),
                    ));
                }
            }
            for rule in &service.public {
                PublicRule::parse(rule).map_err(|reason| fail("public", reason))?;
            }
            for target in &service.calls {
                if !self.services.iter().any(|s| &s.name == target) {
                    return Err(fail(
                        "calls",
                        format!("there is no service {target:?} in this manifest"),
                    ));
                }
            }
            for host in &service.allowed_hosts {
                if host.is_empty() || host.contains(['/', ' ', ':']) || host.ends_with(".internal")
                {
                    return Err(fail(
                        "allowed_hosts",
                        format!(
                            "{host:?} must be a plain host name (services are named in `calls`)"
                        ),
                    ));
                }
            }
            let breaker = &service.breaker;
            if breaker.failures == 0
                || !(1..=MAX_TIMEOUT_MS).contains(&breaker.open_ms)
                || breaker.error_rate_pct > 100
                || breaker.min_requests == 0
                || !(100..=MAX_TIMEOUT_MS).contains(&breaker.window_ms)
            {
                return Err(fail(
                    "breaker",
                    format!(
                        "failures and min_requests must be at least 1, open_ms from 1 and window_ms from 100 to {MAX_TIMEOUT_MS}, error_rate_pct at most 100; got {breaker:?}"
                    ),
                ));
            }
            let health = &service.health;
            if health.interval_ms > MAX_TIMEOUT_MS {
                return Err(fail(
                    "health.interval_ms",
                    format!(
                        "must be at most {MAX_TIMEOUT_MS} (0 turns periodic checks off), got {}",
                        health.interval_ms
                    ),
                ));
            }
            if !(1..=100).contains(&health.unhealthy_after) {
                return Err(fail(
                    "health.unhealthy_after",
                    format!("must be from 1 to 100, got {}", health.unhealthy_after),
                ));
            }
            if let Some(smoke) = &health.smoke
                && (!smoke.starts_with('/') || smoke.contains(char::is_whitespace))
            {
                return Err(fail(
                    "health.smoke",
                    format!("{smoke:?} must be a path starting with '/', without spaces"),
                ));
            }
            let canary = &service.canary;
            if !(100..=86_400_000).contains(&canary.window_ms) {
                return Err(fail(
                    "canary.window_ms",
                    format!("must be from 100 to 86400000, got {}", canary.window_ms),
                ));
            }
            if canary.min_requests == 0 || canary.error_margin_pct > 100 {
                return Err(fail(
                    "canary",
                    format!(
                        "min_requests must be at least 1 and error_margin_pct at most 100, got {canary:?}"
                    ),
                ));
            }
            if let Err((field, reason)) = service.policy.validate() {
                return Err(ManifestError::Field {
                    path: path.to_path_buf(),
                    service: service.name.clone(),
                    field,
                    reason,
                });
            }
            let limits = &service.limits;
            if !(1..=MAX_MEMORY_MIB).contains(&limits.memory_mib) {
                return Err(fail(
                    "limits.memory_mib",
                    format!(
                        "must be from 1 to {MAX_MEMORY_MIB}, got {}",
                        limits.memory_mib
                    ),
                ));
            }
            if !(1..=MAX_TIMEOUT_MS).contains(&limits.timeout_ms) {
                return Err(fail(
                    "limits.timeout_ms",
                    format!(
                        "must be from 1 to {MAX_TIMEOUT_MS}, got {}",
                        limits.timeout_ms
                    ),
                ));
            }
            if limits.max_body_kib > MAX_BODY_KIB {
                return Err(fail(
                    "limits.max_body_kib",
                    format!(
                        "must be at most {MAX_BODY_KIB}, got {}",
                        limits.max_body_kib
                    ),
                ));
            }
            if !(1..=MAX_INSTANCE_REUSE).contains(&limits.instance_reuse) {
                return Err(fail(
                    "limits.instance_reuse",
                    format!(
                        "must be from 1 (a fresh instance per request) to {MAX_INSTANCE_REUSE}, got {}",
                        limits.instance_reuse
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Service names: `[a-z][a-z0-9-]{0,62}`.
pub fn check_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid service name: use 1 to 63 lower-case letters, digits \
             and '-', starting with a letter"
        ))
    }
}

/// Version labels: 1 to 64 of `A-Z a-z 0-9 . _ + -`.
pub fn check_version(version: &str) -> Result<(), String> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{version:?} is not a valid version label: use 1 to 64 letters, digits, \
             '.', '_', '+' and '-'"
        ))
    }
}

/// Topic names: 1 to 128 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 128
        && topic.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && topic
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{topic:?} is not a valid topic: use 1 to 128 lower-case letters, digits, '.', \
             '_' and '-', starting with a letter or digit"
        ))
    }
}

fn check_route(route: &str) -> Result<(), String> {
    if !route.starts_with('/') {
        return Err(format!("{route:?} must start with '/'"));
    }
    if route.len() > 1 && route.ends_with('/') {
        return Err(format!("{route:?} must not end with '/'"));
    }
    if route.contains(['?', '#', '*', ' ']) || route.contains("//") {
        return Err(format!(
            "{route:?} must be a plain path prefix (no '?', '#', '*', spaces or '//')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::from_toml(
            text,
            Path::new("registry/microhost.toml"),
            PathBuf::from("registry"),
        )
    }

    const GOOD: &str = r#"
        [[service]]
        name = "product"
        route = "/api/products"
        component = { path = "product/0.1.0.wasm", version = "0.1.0" }
        limits = { memory_mib = 32, timeout_ms = 2000 }
        config = { default_page_size = "10" }
    "#;

    #[test]
    fn parses_a_good_manifest() -> anyhow::Result<()> {
        let m = parse(GOOD)?;
        assert_eq!(m.services.len(), 1);
        let s = &m.services[0];
        assert_eq!(s.limits.memory_mib, 32);
        assert_eq!(
            s.limits.max_body_kib, 1024,
            "unset limits take their default"
        );
        assert_eq!(s.config["default_page_size"], "10");
        assert_eq!(
            m.component_path(s),
            PathBuf::from("registry/product/0.1.0.wasm")
        );
        Ok(())
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let err = parse(&GOOD.replace("route =", "rout =")).expect_err("unknown field");
        let msg = err.to_string();
        assert!(msg.contains("registry/microhost.toml"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
        assert!(msg.contains("rout"), "{msg}");
    }

    #[test]
    fn bad_values_name_service_field_and_value() {
        let cases = [
            (
                GOOD.replace("\"product\"", "\"Product\""),
                "name",
                "Product",
            ),
            (GOOD.replace("\"/api/products\"", "\"api\""), "route", "api"),
            (
                GOOD.replace("\"0.1.0\" }", "\"\" }"),
                "component.version",
                "\"\"",
            ),
            (
                GOOD.replace("memory_mib = 32", "memory_mib = 0"),
                "limits.memory_mib",
                "0",
            ),
            (
                GOOD.replace("timeout_ms = 2000", "timeout_ms = 9999999"),
                "limits.timeout_ms",
                "9999999",
            ),
        ];
        for (text, field, value) in cases {
            let msg = parse(&text).expect_err(field).to_string();
            assert!(msg.contains(&format!("`{field}`")), "{msg}");
            assert!(msg.contains(value), "{msg}");
            assert!(msg.contains("registry/microhost.toml"), "{msg}");
        }
    }

    #[test]
    fn duplicate_names_and_routes_are_refused() {
        let twice = format!("{GOOD}\n{GOOD}");
        let msg = parse(&twice).expect_err("duplicate").to_string();
        assert!(msg.contains("same name"), "{msg}");
        let other = GOOD.replace("name = \"product\"", "name = \"other\"");
        let msg = parse(&format!("{GOOD}\n{other}"))
            .expect_err("dup route")
            .to_string();
        assert!(msg.contains("already the route"), "{msg}");
    }

    #[test]
    fn subscriptions_parse_with_defaults_and_are_checked() -> anyhow::Result<()> {
        let text = format!(
            "{GOOD}publishes = [\"order.created\"]\n[[service.subscribe]]\ntopic = \"stock.reserved\"\nmax_deliver = 3\n"
        );
        let m = parse(&text)?;
        let s = &m.services[0];
        assert_eq!(s.publishes, ["order.created"]);
        assert_eq!(s.subscribe[0].max_deliver, 3);
        assert_eq!(s.subscribe[0].backoff_ms, 200);
        assert_eq!(s.subscribe[0].backoff(1).as_millis(), 200);
        assert_eq!(s.subscribe[0].backoff(3).as_millis(), 800);
        assert_eq!(s.subscribe[0].backoff(40).as_millis(), 30_000);

        let bad = text.replace("\"order.created\"", "\"Order Created\"");
        let msg = parse(&bad).expect_err("bad topic").to_string();
        assert!(
            msg.contains("`publishes`") && msg.contains("Order Created"),
            "{msg}"
        );
        let bad = text.replace("max_deliver = 3", "max_deliver = 0");
        let msg = parse(&bad).expect_err("bad max_deliver").to_string();
        assert!(msg.contains("`subscribe.max_deliver`"), "{msg}");
        Ok(())
    }

    #[test]
    fn public_rules() -> Result<(), String> {
        let get_below = PublicRule::parse("GET /api/products/*")?;
        assert!(get_below.matches("GET", "/api/products"));
        assert!(get_below.matches("GET", "/api/products/7"));
        assert!(!get_below.matches("POST", "/api/products"));
        assert!(!get_below.matches("GET", "/api/productsx"));
        let exact = PublicRule::parse("/api/users/login")?;
        assert!(exact.matches("POST", "/api/users/login"));
        assert!(!exact.matches("POST", "/api/users/login/x"));
        assert!(PublicRule::parse("get /x").is_err());
        assert!(PublicRule::parse("GET x").is_err());
        Ok(())
    }

    #[test]
    fn calls_must_name_services_of_the_manifest() {
        let msg = parse(&format!("{GOOD}calls = [\"nobody\"]\n"))
            .expect_err("unknown callee")
            .to_string();
        assert!(msg.contains("`calls`") && msg.contains("nobody"), "{msg}");
    }

    #[test]
    fn a_single_component_becomes_service_app_on_root() -> Result<(), ManifestError> {
        let m = Manifest::single_component(Path::new("/tmp/with \"quote\".wasm"))?;
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].name, "app");
        assert_eq!(m.services[0].route, "/");
        assert_eq!(
            m.services[0].component.path,
            Path::new("/tmp/with \"quote\".wasm")
        );
        Ok(())
    }

    #[test]
    fn policies_parse_and_bad_ones_name_their_field() -> anyhow::Result<()> {
        let with = |policy: &str| parse(&format!("{GOOD}policy = {{ {policy} }}\n"));
        let m = with(
            r#"rate_limit = { per_second = 5 }, cache = { ttl_ms = 1000 }, fallback = { kind = "cached" }, cors = { allow_origins = ["*"] }"#,
        )?;
        let p = &m.services[0].policy;
        assert_eq!(p.rate_limit.as_ref().map(RateLimitSpec::burst), Some(5));
        assert_eq!(p.retry.attempts, 1, "no retries unless asked");
        assert_eq!(p.fallback, FallbackSpec::Cached);
        let cases = [
            ("rate_limit = { per_second = 0 }", "`policy.rate_limit`"),
            ("concurrency = { max = 0 }", "`policy.concurrency`"),
            ("retry = { attempts = 11 }", "`policy.retry.attempts`"),
            (r#"fallback = { kind = "cached" }"#, "`policy.fallback`"),
            (
                r#"fallback = { kind = "static", status = 99 }"#,
                "`policy.fallback.status`",
            ),
            (
                r#"cors = { allow_origins = ["*"], allow_credentials = true }"#,
                "`policy.cors.allow_credentials`",
            ),
            (
                r#"cors = { allow_origins = ["shop.example"] }"#,
                "`policy.cors.allow_origins`",
            ),
            (
                r#"transform = { strip_prefix = "api" }"#,
                "`policy.transform.strip_prefix`",
            ),
            (
                r#"transform = { request_headers = { set = { "x-microhost-subject" = "admin" } } }"#,
                "`policy.transform.request_headers`",
            ),
            (
                r#"transform = { response_headers = { remove = ["transfer-encoding"] } }"#,
                "`policy.transform.response_headers`",
            ),
        ];
        for (policy, field) in cases {
            let msg = with(policy).expect_err(policy).to_string();
            assert!(msg.contains(field), "{policy}: {msg}");
            assert!(msg.contains("\"product\""), "{policy}: {msg}");
        }
        let msg = with(r#"cache = { ttl = 5 }"#)
            .expect_err("unknown field")
            .to_string();
        assert!(msg.contains("ttl"), "{msg}");
        Ok(())
    }

    #[test]
    fn wrong_type_is_reported() {
        let msg = parse(&GOOD.replace("memory_mib = 32", "memory_mib = \"lots\""))
            .expect_err("type")
            .to_string();
        assert!(msg.contains("memory_mib"), "{msg}");
    }
}
