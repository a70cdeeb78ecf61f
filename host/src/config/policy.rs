//! A route's gateway policies in the manifest: rate limit, load shedding, retries,
//! response cache, fallback, CORS and transformation. Every table is optional; a
//! service without them is routed as before. Validated with the rest of the manifest,
//! so every error names the file, the service and the field.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The policy tables of one `[[service]]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySpec {
    pub rate_limit: Option<RateLimitSpec>,
    pub concurrency: Option<ConcurrencySpec>,
    pub retry: RetrySpec,
    pub cache: Option<CacheSpec>,
    pub fallback: FallbackSpec,
    pub cors: Option<CorsSpec>,
    pub transform: TransformSpec,
}

/// A token bucket per client: `per_second` tokens a second, holding at most `burst`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub per_second: u32,
    /// Defaults to `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub key: RateLimitKey,
}

impl RateLimitSpec {
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }
}

/// Whose bucket a request takes from.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimitKey {
    /// The client's IP address.
    #[default]
    Ip,
    /// The verified token's subject; requests without a token use their IP address.
    Subject,
}

/// Load shedding: at most `max` requests run at once (the service's instances); up to
/// `queue` more wait at most `queue_timeout_ms` for a turn; the rest get 503 at once.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    pub max: u32,
    #[serde(default)]
    pub queue: u32,
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
}

fn default_queue_timeout_ms() -> u64 {
    1_000
}

/// Retries of idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE) that failed with
/// 502, 503 or 504: up to `attempts` tries in all, each with the service's timeout.
/// Retries are paid from a budget: every request adds `budget_pct` % of a retry, and
/// `min_per_sec` retries a second are always allowed, so retries cannot multiply load.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    pub attempts: u32,
    pub budget_pct: u32,
    pub min_per_sec: u32,
    /// Delay before the first retry; doubles for each further one.
    pub backoff_ms: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 1,
            budget_pct: 20,
            min_per_sec: 3,
            backoff_ms: 25,
        }
    }
}

/// Caching of `GET` responses (200 only): kept for `ttl_ms` unless the response's
/// `Cache-Control` says otherwise (`max-age`/`s-maxage` set the lifetime; `no-store`,
/// `no-cache` and `private` keep it out). Entries are per token subject, and are dropped
/// when the service's active version changes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    pub ttl_ms: u64,
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Larger responses are not cached.
    #[serde(default = "default_max_entry_kib")]
    pub max_entry_kib: u64,
}

fn default_max_entries() -> usize {
    1_000
}

fn default_max_entry_kib() -> u64 {
    256
}

/// What a `GET` or `HEAD` gets when the service cannot answer (breaker open, shed,
/// unhealthy, or failed after retries).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum FallbackSpec {
    /// A problem response saying why (the default).
    #[default]
    Problem,
    /// The last cached response for the request, however old; else a problem.
    Cached,
    /// A fixed response.
    Static {
        #[serde(default = "default_fallback_status")]
        status: u16,
        #[serde(default)]
        body: String,
        #[serde(default = "default_fallback_type")]
        content_type: String,
    },
}

fn default_fallback_status() -> u16 {
    200
}

fn default_fallback_type() -> String {
    "application/json".to_string()
}

/// Cross-origin requests from browsers: preflights are answered by the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Origins like `https://shop.example`, or `"*"`.
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default = "default_cors_headers")]
    pub allow_headers: Vec<String>,
    #[serde(default = "default_cors_expose")]
    pub expose_headers: Vec<String>,
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: u64,
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

fn default_cors_headers() -> Vec<String> {
    ["authorization", "content-type"].map(String::from).to_vec()
}

fn default_cors_expose() -> Vec<String> {
    ["x-request-id"].map(String::from).to_vec()
}

fn default_cors_max_age() -> u64 {
    600
}

/// Rewrites between the edge and the service.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TransformSpec {
    /// Removed from the front of the path before the service sees it (whole segments).
    pub strip_prefix: Option<String>,
    /// Put in front of the path (after `strip_prefix`).
    pub add_prefix: Option<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// Headers to set (replacing any of the same name) and to remove.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// Headers a transform may not touch: the host's own and the connection's.
const RESERVED_HEADERS: [&str; 9] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "host",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "trailer",
];

impl PolicySpec {
    /// Checks every value; the error names the field as the service table spells it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(rl) = &self.rate_limit
            && (rl.per_second == 0 || rl.burst() == 0)
        {
            return Err((
                "policy.rate_limit",
                format!(
                    "per_second and burst must be at least 1, got per_second = {} and burst = {}",
                    rl.per_second,
                    rl.burst()
                ),
            ));
        }
        if let Some(c) = &self.concurrency {
            if c.max == 0 || c.max > 100_000 || c.queue > 1_000_000 {
                return Err((
                    "policy.concurrency",
                    format!(
                        "max must be from 1 to 100000 and queue at most 1000000, got max = {} and queue = {}",
                        c.max, c.queue
                    ),
                ));
            }
            if c.queue_timeout_ms > super::MAX_TIMEOUT_MS {
                return Err((
                    "policy.concurrency.queue_timeout_ms",
                    format!("must be at most 600000, got {}", c.queue_timeout_ms),
                ));
            }
        }
        let r = &self.retry;
        if !(1..=10).contains(&r.attempts) {
            return Err((
                "policy.retry.attempts",
                format!("must be from 1 (no retries) to 10, got {}", r.attempts),
            ));
        }
        if r.budget_pct > 100 || r.backoff_ms > 60_000 {
            return Err((
                "policy.retry",
                format!(
                    "budget_pct must be at most 100 and backoff_ms at most 60000, got budget_pct = {} and backoff_ms = {}",
                    r.budget_pct, r.backoff_ms
                ),
            ));
        }
        if let Some(c) = &self.cache
            && (c.ttl_ms == 0
                || !(1..=1_000_000).contains(&c.max_entries)
                || !(1..=1024 * 1024).contains(&c.max_entry_kib))
        {
            return Err((
                "policy.cache",
                format!(
                    "ttl_ms must be at least 1, max_entries from 1 to 1000000 and max_entry_kib from 1 to 1048576, got {c:?}"
                ),
            ));
        }
        if self.fallback == FallbackSpec::Cached && self.cache.is_none() {
            return Err((
                "policy.fallback",
                "kind = \"cached\" needs a [service.policy.cache] table to serve from".to_string(),
            ));
        }
        if let FallbackSpec::Static {
            status,
            content_type,
            ..
        } = &self.fallback
        {
            if http::StatusCode::from_u16(*status).is_err() || *status < 200 {
                return Err((
                    "policy.fallback.status",
                    format!("must be an HTTP status from 200 to 599, got {status}"),
                ));
            }
            if http::HeaderValue::from_str(content_type).is_err() {
                return Err((
                    "policy.fallback.content_type",
                    format!("{content_type:?} is not a valid header value"),
                ));
            }
        }
        if let Some(cors) = &self.cors {
            if cors.allow_origins.is_empty() {
                return Err((
                    "policy.cors.allow_origins",
                    "must list at least one origin (or \"*\")".to_string(),
                ));
            }
            for origin in &cors.allow_origins {
                let ok = origin == "*"
                    || ((origin.starts_with("http://") || origin.starts_with("https://"))
                        && !origin.ends_with('/')
                        && http::HeaderValue::from_str(origin).is_ok());
                if !ok {
                    return Err((
                        "policy.cors.allow_origins",
                        format!(
                            "{origin:?} must be \"*\" or a scheme and host like \"https://shop.example\""
                        ),
                    ));
                }
            }
            if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
                return Err((
                    "policy.cors.allow_credentials",
                    "cannot be true with the origin \"*\": browsers refuse it; list the origins"
                        .to_string(),
                ));
            }
            for method in &cors.allow_methods {
                if http::Method::from_bytes(method.as_bytes()).is_err()
                    || method.chars().any(|c| c.is_ascii_lowercase())
                {
                    return Err((
                        "policy.cors.allow_methods",
                        format!("{method:?} is not an upper-case HTTP method"),
                    ));
                }
            }
            for name in cors.allow_headers.iter().chain(&cors.expose_headers) {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err((
                        "policy.cors.allow_headers",
                        format!("{name:?} is not a header name"),
                    ));
                }
            }
        }
        let t = &self.transform;
        for (field, prefix) in [
            ("policy.transform.strip_prefix", &t.strip_prefix),
            ("policy.transform.add_prefix", &t.add_prefix),
        ] {
            if let Some(p) = prefix
                && (!p.starts_with('/')
                    || p.len() < 2
                    || p.ends_with('/')
                    || p.contains(['?', '#', ' ']))
            {
                return Err((
                    field,
                    format!(
                        "{p:?} must be a path like \"/api\" (starting with '/', not ending with one)"
                    ),
                ));
            }
        }
        for (field, ops) in [
            ("policy.transform.request_headers", &t.request_headers),
            ("policy.transform.response_headers", &t.response_headers),
        ] {
            for name in ops.set.keys().chain(&ops.remove) {
                let lower = name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err((field, format!("{name:?} is not a header name")));
                }
                if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-microhost-") {
                    return Err((
                        field,
                        format!("{name:?} is set by the host and cannot be transformed"),
                    ));
                }
            }
            for (name, value) in &ops.set {
                if http::HeaderValue::from_str(value).is_err() {
                    return Err((
                        field,
                        format!("the value of {name:?} is not a valid header value: {value:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
}
