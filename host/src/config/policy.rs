//! A route's gateway policies (`[service.policy]`): rate limit, load shedding, retries,
//! response cache, fallback, CORS, transformation and idempotency keys, each validating
//! its own values.
//! Every table is optional; a service without them is routed as before.

use super::id::ServiceName;
use super::service::MAX_TIMEOUT_MS;
use super::{FieldError, in_range};
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
    pub idempotency: IdempotencySpec,
}

/// `Idempotency-Key` on `POST` and `PATCH` (always on): how long a key's stored answer
/// is kept.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencySpec {
    pub ttl_secs: u64,
}

/// Longest a key's answer may be kept: 30 days.
pub const MAX_IDEMPOTENCY_TTL_SECS: u64 = 30 * 24 * 3600;

impl Default for IdempotencySpec {
    fn default() -> Self {
        IdempotencySpec {
            ttl_secs: 24 * 3600,
        }
    }
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
/// Retries are paid from a budget (tower's `TpsBudget`): every request adds `budget_pct` %
/// of a retry, counted for 10 s, and `min_per_sec` retries a second are allowed on top
/// (granted over the same 10 s), so retries cannot multiply load.
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

/// What a request gets when the service cannot answer (breaker open, shed, unhealthy,
/// or failed after retries): `problem`, `cached` and `static` answer a `GET` or `HEAD`;
/// `service` sends the request to another service; `queue` keeps a write for later.
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
    /// Another service of the manifest (a read-only replica, a degraded mode) answers
    /// instead, through its own policies: any request the service never got (breaker
    /// open, shed, unhealthy), and an idempotent one that failed retriably. It receives
    /// the request as the service would have; its own fallback may not be a service.
    Service { service: ServiceName },
    /// For non-idempotent routes: a `POST`, `PUT`, `PATCH` or `DELETE` from the edge that
    /// the service cannot take (breaker open, shed, unhealthy, or its own `503`: a
    /// service it calls is down) is stored durably and
    /// answered `202 Accepted` with a `Location` to poll; it is replayed once the
    /// service takes calls again, in arrival order, each exactly once (its effects,
    /// its result and its removal from the queue commit together). The result is kept
    /// at the `Location` for `keep_secs`.
    Queue {
        /// How long a replayed request's result stays at its `Location`.
        #[serde(default = "default_queue_keep_secs")]
        keep_secs: u64,
        /// Requests waiting at most; past it the request gets the 503 it would have.
        #[serde(default = "default_queue_max")]
        max_queued: u64,
        /// Replays of a request that the service fails (5xx) before that failure is
        /// its result. Refusals of the host (breaker open, shed) do not count.
        #[serde(default = "default_queue_attempts")]
        max_attempts: u32,
    },
}

fn default_queue_keep_secs() -> u64 {
    86_400
}

fn default_queue_max() -> u64 {
    10_000
}

fn default_queue_attempts() -> u32 {
    5
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
    /// Checks every table; the error names the field as the service table spells it.
    pub(super) fn validate(&self) -> Result<(), FieldError> {
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit.validate()?;
        }
        if let Some(concurrency) = &self.concurrency {
            concurrency.validate()?;
        }
        self.retry.validate()?;
        if let Some(cache) = &self.cache {
            cache.validate()?;
        }
        self.fallback.validate(self.cache.is_some())?;
        in_range(
            "policy.idempotency.ttl_secs",
            self.idempotency.ttl_secs,
            1..=MAX_IDEMPOTENCY_TTL_SECS,
        )?;
        if let Some(cors) = &self.cors {
            cors.validate()?;
        }
        self.transform.validate()
    }
}

impl RateLimitSpec {
    fn validate(&self) -> Result<(), FieldError> {
        self.check("policy.rate_limit.per_second", "policy.rate_limit.burst")
    }

    /// The bounds, named as the table holding the limit spells its fields.
    pub(super) fn check(
        &self,
        per_second: &'static str,
        burst: &'static str,
    ) -> Result<(), FieldError> {
        in_range(per_second, self.per_second, 1..)?;
        in_range(burst, self.burst(), 1..)
    }
}

impl ConcurrencySpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("policy.concurrency.max", self.max, 1..=100_000)?;
        in_range("policy.concurrency.queue", self.queue, ..=1_000_000)?;
        in_range(
            "policy.concurrency.queue_timeout_ms",
            self.queue_timeout_ms,
            ..=MAX_TIMEOUT_MS,
        )
    }
}

impl RetrySpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("policy.retry.attempts", self.attempts, 1..=10)
            .map_err(|e| e.note("1 is no retries"))?;
        in_range("policy.retry.budget_pct", self.budget_pct, ..=100)?;
        in_range("policy.retry.backoff_ms", self.backoff_ms, ..=60_000)
    }
}

impl CacheSpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("policy.cache.ttl_ms", self.ttl_ms, 1..)?;
        let max_entries = u64::try_from(self.max_entries).unwrap_or(u64::MAX);
        in_range("policy.cache.max_entries", max_entries, 1..=1_000_000)?;
        in_range(
            "policy.cache.max_entry_kib",
            self.max_entry_kib,
            1..=1024 * 1024,
        )
    }
}

impl FallbackSpec {
    /// `has_cache`: the route has a `[service.policy.cache]` to serve `cached` from.
    fn validate(&self, has_cache: bool) -> Result<(), FieldError> {
        match self {
            FallbackSpec::Problem | FallbackSpec::Service { .. } => Ok(()),
            FallbackSpec::Queue {
                keep_secs,
                max_queued,
                max_attempts,
            } => {
                in_range("policy.fallback.keep_secs", *keep_secs, 1..=30 * 86_400)?;
                in_range("policy.fallback.max_queued", *max_queued, 1..=1_000_000)?;
                in_range(
                    "policy.fallback.max_attempts",
                    u64::from(*max_attempts),
                    1..=100,
                )
            }
            FallbackSpec::Cached if has_cache => Ok(()),
            FallbackSpec::Cached => Err(FieldError::new(
                "policy.fallback",
                "kind = \"cached\" needs a [service.policy.cache] table to serve from",
            )),
            FallbackSpec::Static {
                status,
                content_type,
                ..
            } => {
                if http::StatusCode::from_u16(*status).is_err() || *status < 200 {
                    return Err(FieldError::new(
                        "policy.fallback.status",
                        format!("must be an HTTP status from 200 to 599, got {status}"),
                    ));
                }
                if http::HeaderValue::from_str(content_type).is_err() {
                    return Err(FieldError::new(
                        "policy.fallback.content_type",
                        format!("{content_type:?} is not a valid header value"),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl CorsSpec {
    fn validate(&self) -> Result<(), FieldError> {
        if self.allow_origins.is_empty() {
            return Err(FieldError::new(
                "policy.cors.allow_origins",
                "must list at least one origin (or \"*\")",
            ));
        }
        for origin in &self.allow_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && http::HeaderValue::from_str(origin).is_ok());
            if !ok {
                return Err(FieldError::new(
                    "policy.cors.allow_origins",
                    format!(
                        "{origin:?} must be \"*\" or a scheme and host like \"https://shop.example\""
                    ),
                ));
            }
        }
        if self.allow_credentials && self.allow_origins.iter().any(|o| o == "*") {
            return Err(FieldError::new(
                "policy.cors.allow_credentials",
                "cannot be true with the origin \"*\": browsers refuse it; list the origins",
            ));
        }
        for method in &self.allow_methods {
            if http::Method::from_bytes(method.as_bytes()).is_err()
                || method.chars().any(|c| c.is_ascii_lowercase())
            {
                return Err(FieldError::new(
                    "policy.cors.allow_methods",
                    format!("{method:?} is not an upper-case HTTP method"),
                ));
            }
        }
        for (field, names) in [
            ("policy.cors.allow_headers", &self.allow_headers),
            ("policy.cors.expose_headers", &self.expose_headers),
        ] {
            for name in names {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(FieldError::new(
                        field,
                        format!("{name:?} is not a header name"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl TransformSpec {
    fn validate(&self) -> Result<(), FieldError> {
        for (field, prefix) in [
            ("policy.transform.strip_prefix", &self.strip_prefix),
            ("policy.transform.add_prefix", &self.add_prefix),
        ] {
            if let Some(p) = prefix
                && (!p.starts_with('/')
                    || p.len() < 2
                    || p.ends_with('/')
                    || p.contains(['?', '#', ' ']))
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{p:?} must be a path like \"/api\" (starting with '/', not ending with one)"
                    ),
                ));
            }
        }
        self.request_headers
            .validate("policy.transform.request_headers")?;
        self.response_headers
            .validate("policy.transform.response_headers")
    }
}

impl HeaderOps {
    /// `field`: where these operations are in the manifest.
    fn validate(&self, field: &'static str) -> Result<(), FieldError> {
        for name in self.set.keys().chain(&self.remove) {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(FieldError::new(
                    field,
                    format!("{name:?} is not a header name"),
                ));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-microhost-") {
                return Err(FieldError::new(
                    field,
                    format!("{name:?} is set by the host and cannot be transformed"),
                ));
            }
        }
        for (name, value) in &self.set {
            if http::HeaderValue::from_str(value).is_err() {
                return Err(FieldError::new(
                    field,
                    format!("the value of {name:?} is not a valid header value: {value:?}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{GOOD, parse};

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
        let queued = with(r#"fallback = { kind = "queue" }"#)?;
        assert_eq!(
            queued.services[0].policy.fallback,
            FallbackSpec::Queue {
                keep_secs: 86_400,
                max_queued: 10_000,
                max_attempts: 5
            },
            "the defaults"
        );
        let cases = [
            (
                r#"fallback = { kind = "queue", keep_secs = 0 }"#,
                "`policy.fallback.keep_secs`",
            ),
            (
                r#"fallback = { kind = "queue", max_attempts = 0 }"#,
                "`policy.fallback.max_attempts`",
            ),
            (
                "rate_limit = { per_second = 0 }",
                "`policy.rate_limit.per_second`",
            ),
            ("concurrency = { max = 0 }", "`policy.concurrency.max`"),
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
}
