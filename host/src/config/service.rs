//! One `[[service]]` of the manifest: its route, component, limits, topics, calls,
//! breaker, health and canary settings, each validating its own values.

use super::id::{ServiceName, Topic, VersionLabel};
use super::policy::PolicySpec;
use super::secret::Secret;
use super::{FieldError, in_range};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

/// Most memory a service may ask for, in MiB (the runtime's pool is sized for it).
pub const MAX_MEMORY_MIB: u32 = 1024;
/// Longest request timeout, in milliseconds (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Most requests one instance may serve.
pub const MAX_INSTANCE_REUSE: u32 = 100_000;
/// Largest request body limit, in KiB (1 GiB).
pub const MAX_BODY_KIB: u64 = 1024 * 1024;

/// One service.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Lower-case letters, digits and `-`, starting with a letter; at most 63 characters.
    pub name: ServiceName,
    /// Path prefix the gateway routes to this service, e.g. `/api/products`. Matching
    /// is by whole path segments; the longest matching prefix wins.
    pub route: String,
    pub component: ComponentSpec,
    #[serde(default)]
    pub limits: Limits,
    /// Values the service reads through `wasi:config/store`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Values it reads the same way, from an environment variable or a file
    /// (`[service.secrets]`, see [`Secret`]); a name may not also be a `config` key.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Topics the service may publish to; publishing elsewhere is an error the guest sees.
    #[serde(default)]
    pub publishes: Vec<Topic>,
    /// Topics the service receives events from (through `microhost:platform/subscriber`).
    #[serde(default)]
    pub subscribe: Vec<SubscriptionSpec>,
    /// Requests to the route need a valid bearer token (except the `public` ones).
    #[serde(default)]
    pub protected: bool,
    /// Exceptions to `protected`: `"METHOD /path"` or `"/path"` (any method); a path
    /// ending in `/*` also matches everything below it.
    #[serde(default)]
    pub public: Vec<PublicRule>,
    /// Services this one may call at `http://<service>.internal/...`.
    #[serde(default)]
    pub calls: Vec<ServiceName>,
    /// What the host's auth interface lets the service do beyond hashing passwords.
    #[serde(default)]
    pub auth: ServiceAuthSpec,
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
/// served `min_requests`, it is rolled back if its failure rate (failures as the outcome
/// table in docs/architecture.md counts them: 5xx but the service's own 503, traps,
/// timeouts, failed deliveries)
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
/// after `failures` consecutive failed calls (trap, timeout, a 5xx but 503), or when
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

/// `auth = { issue_tokens = true }`: the service may sign tokens with the host's key for
/// any subject (a login service). Without it `issue-token` answers `auth-error`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceAuthSpec {
    #[serde(default)]
    pub issue_tokens: bool,
}

/// A parsed `public` entry (`"METHOD /path"`, `"/path"`, `/*` for everything below).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicRule {
    /// `None` matches any method.
    pub method: Option<String>,
    pub path: String,
    /// The path ended in `/*`: everything below it matches too.
    pub below: bool,
}

impl TryFrom<String> for PublicRule {
    type Error = String;

    fn try_from(rule: String) -> Result<PublicRule, String> {
        PublicRule::parse(&rule)
    }
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
    pub topic: Topic,
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
    pub version: VersionLabel,
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
    /// Key-value writes (sets and deletes of distinct keys) one invocation may buffer.
    pub writes: u32,
    /// Bytes of keys and values one invocation may buffer, in KiB: the host holds them
    /// until the commit, so they bound the host memory one invocation can take.
    pub write_kib: u64,
    /// Bytes of event payloads one invocation may publish, in KiB (held until commit).
    pub event_kib: u64,
    /// Bytes one invocation may send over outgoing HTTP (request headers and bodies of
    /// all its calls, to services and hosts), in KiB.
    pub http_send_kib: u64,
    /// Bytes one invocation may receive over outgoing HTTP (response headers and
    /// bodies of all its calls), in KiB.
    pub http_receive_kib: u64,
    /// Host resources one instance may hold open at once (handles in its wasmtime
    /// `ResourceTable`: streams, header maps, requests, responses, buckets, ...); each
    /// is host memory the guest's own limit does not count.
    pub resources: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            instance_reuse: 1,
            timeout_ms: 10_000,
            max_body_kib: 1024,
            writes: 10_000,
            write_kib: 16 * 1024,
            event_kib: 16 * 1024,
            http_send_kib: 16 * 1024,
            http_receive_kib: 16 * 1024,
            resources: 1000,
        }
    }
}

impl Limits {
    pub fn write_bytes(&self) -> usize {
        usize::try_from(self.write_kib.saturating_mul(1024)).unwrap_or(usize::MAX)
    }

    pub fn event_bytes(&self) -> usize {
        usize::try_from(self.event_kib.saturating_mul(1024)).unwrap_or(usize::MAX)
    }

    pub fn http_send_bytes(&self) -> usize {
        usize::try_from(self.http_send_kib.saturating_mul(1024)).unwrap_or(usize::MAX)
    }

    pub fn http_receive_bytes(&self) -> usize {
        usize::try_from(self.http_receive_kib.saturating_mul(1024)).unwrap_or(usize::MAX)
    }
}

impl ServiceSpec {
    /// Checks the service's own values; `services` are the names in the manifest (for
    /// `calls`). Names, topics and the version label were checked when parsed.
    pub(super) fn validate(&self, services: &HashSet<&str>) -> Result<(), FieldError> {
        check_route(&self.route).map_err(|reason| FieldError::new("route", reason))?;
        if let Some(name) = self
            .secrets
            .keys()
            .find(|name| self.config.contains_key(*name))
        {
            return Err(FieldError::new(
                "secrets",
                format!("{name:?} is also a `config` key: a service reads one value per name"),
            ));
        }
        self.component.validate()?;
        let mut published = HashSet::new();
        for topic in &self.publishes {
            if !published.insert(topic) {
                return Err(FieldError::new(
                    "publishes",
                    format!("topic {topic:?} is listed twice"),
                ));
            }
        }
        let mut subscribed = HashSet::new();
        for sub in &self.subscribe {
            if !subscribed.insert(&sub.topic) {
                return Err(FieldError::new(
                    "subscribe.topic",
                    format!("topic {:?} is subscribed twice", sub.topic),
                ));
            }
            sub.validate()?;
        }
        for target in &self.calls {
            if !services.contains(target.as_str()) {
                return Err(FieldError::new(
                    "calls",
                    format!("there is no service {target:?} in this manifest"),
                ));
            }
        }
        for entry in &self.allowed_hosts {
            if !valid_host_entry(entry) {
                return Err(FieldError::new(
                    "allowed_hosts",
                    format!(
                        "{entry:?} must be a host name or IP address, optionally with a port \
                         (`host` for ports 80 and 443, `host:port` for another, `[v6]:port` \
                         for an IPv6 address); services are named in `calls`"
                    ),
                ));
            }
        }
        self.breaker.validate()?;
        self.health.validate()?;
        self.canary.validate()?;
        self.policy.validate()?;
        if let super::FallbackSpec::Service { service } = &self.policy.fallback {
            if service == &self.name {
                return Err(FieldError::new(
                    "policy.fallback.service",
                    format!("{service:?} is this service: a fallback is another one"),
                ));
            }
            if !services.contains(service.as_str()) {
                return Err(FieldError::new(
                    "policy.fallback.service",
                    format!("{service:?} is not a service of the manifest"),
                ));
            }
        }
        self.limits.validate()
    }
}

/// An `allowed_hosts` entry: `host`, `host:port`, `[v6]` or `[v6]:port`, with a port
/// from 1 to 65535 and never a `.internal` name (services are named in `calls`).
fn valid_host_entry(entry: &str) -> bool {
    let (host, port) = match entry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => {
                match port.strip_prefix(':') {
                    Some(port) => (v6, Some(port)),
                    None if port.is_empty() => (v6, None),
                    None => return false,
                }
            }
            _ => return false,
        },
        None => match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        },
    };
    let good_port = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    let v6 = entry.starts_with('[');
    good_port
        && !host.is_empty()
        && (v6 || !host.contains(['/', ' ', ':', '@', '[', ']']))
        && !host.ends_with(".internal")
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

impl ComponentSpec {
    fn validate(&self) -> Result<(), FieldError> {
        if self.path.as_os_str().is_empty() {
            return Err(FieldError::new("component.path", "must not be empty"));
        }
        Ok(())
    }
}

impl SubscriptionSpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("subscribe.max_deliver", self.max_deliver, 1..=1000)?;
        in_range("subscribe.backoff_ms", self.backoff_ms, 1..=MAX_TIMEOUT_MS)?;
        in_range(
            "subscribe.backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_ms..,
        )
        .map_err(|e| e.note("not below backoff_ms"))
    }
}

impl BreakerSpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("breaker.failures", self.failures, 1..)?;
        in_range("breaker.open_ms", self.open_ms, 1..=MAX_TIMEOUT_MS)?;
        in_range("breaker.error_rate_pct", self.error_rate_pct, ..=100)?;
        in_range("breaker.min_requests", self.min_requests, 1..)?;
        in_range("breaker.window_ms", self.window_ms, 100..=MAX_TIMEOUT_MS)
    }
}

impl HealthSpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("health.interval_ms", self.interval_ms, ..=MAX_TIMEOUT_MS)
            .map_err(|e| e.note("0 turns periodic checks off"))?;
        in_range("health.unhealthy_after", self.unhealthy_after, 1..=100)?;
        if let Some(smoke) = &self.smoke
            && (!smoke.starts_with('/') || smoke.contains(char::is_whitespace))
        {
            return Err(FieldError::new(
                "health.smoke",
                format!("{smoke:?} must be a path starting with '/', without spaces"),
            ));
        }
        Ok(())
    }
}

impl CanarySpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("canary.window_ms", self.window_ms, 100..=86_400_000)?;
        in_range("canary.min_requests", self.min_requests, 1..)?;
        in_range("canary.error_margin_pct", self.error_margin_pct, ..=100)
    }
}

impl Limits {
    fn validate(&self) -> Result<(), FieldError> {
        in_range(
            "limits.memory_mib",
            self.memory_mib,
            1..=u64::from(MAX_MEMORY_MIB),
        )?;
        in_range("limits.timeout_ms", self.timeout_ms, 1..=MAX_TIMEOUT_MS)?;
        in_range("limits.max_body_kib", self.max_body_kib, ..=MAX_BODY_KIB)?;
        in_range(
            "limits.instance_reuse",
            self.instance_reuse,
            1..=u64::from(MAX_INSTANCE_REUSE),
        )
        .map_err(|e| e.note("1 is a fresh instance per request"))?;
        in_range("limits.writes", self.writes, 1..=1_000_000)?;
        in_range("limits.write_kib", self.write_kib, 1..=1024 * 1024)?;
        in_range("limits.event_kib", self.event_kib, 1..=1024 * 1024)?;
        in_range("limits.http_send_kib", self.http_send_kib, 1..=1024 * 1024)?;
        in_range(
            "limits.http_receive_kib",
            self.http_receive_kib,
            1..=1024 * 1024,
        )?;
        in_range("limits.resources", self.resources, 16..=1_000_000)
            .map_err(|e| e.note("an instance needs a few for its own request"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{GOOD, parse};

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
    fn allowed_hosts_name_a_host_and_optionally_a_port() {
        let with = |hosts: &str| parse(&format!("{GOOD}allowed_hosts = {hosts}\n"));
        assert!(with(r#"["api.example.com", "db.example.com:5432"]"#).is_ok());
        assert!(with(r#"["10.0.0.7:8080", "[::1]", "[fd00::7]:8080"]"#).is_ok());
        for bad in [
            r#"["::1"]"#,
            r#"["[::1"]"#,
            r#"["[::1]8080"]"#,
            r#"["[not-v6]:80"]"#,
            r#"["a:0"]"#,
            r#"["a:http"]"#,
            r#"["a/b"]"#,
            r#"["u@a"]"#,
            r#"["user.internal"]"#,
        ] {
            let msg = with(bad).map(|_| ()).expect_err(bad).to_string();
            assert!(msg.contains("`allowed_hosts`"), "{bad}: {msg}");
        }
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
    fn every_bound_names_its_field_and_the_value() {
        let cases = [
            (
                "breaker = { failures = 0 }",
                "breaker.failures",
                "must be at least 1, got 0",
            ),
            (
                "breaker = { window_ms = 50 }",
                "breaker.window_ms",
                "from 100 to 600000, got 50",
            ),
            (
                "breaker = { error_rate_pct = 101 }",
                "breaker.error_rate_pct",
                "at most 100, got 101",
            ),
            (
                "health = { interval_ms = 600001 }",
                "health.interval_ms",
                "got 600001 (0 turns",
            ),
            (
                "health = { unhealthy_after = 0 }",
                "health.unhealthy_after",
                "from 1 to 100, got 0",
            ),
            (
                "canary = { window_ms = 99 }",
                "canary.window_ms",
                "from 100 to 86400000, got 99",
            ),
            (
                "canary = { min_requests = 0 }",
                "canary.min_requests",
                "at least 1, got 0",
            ),
            (
                "canary = { error_margin_pct = 200 }",
                "canary.error_margin_pct",
                "got 200",
            ),
            (
                "limits = { max_body_kib = 2000000 }",
                "limits.max_body_kib",
                "at most 1048576, got 2000000",
            ),
            (
                "limits = { http_send_kib = 0 }",
                "limits.http_send_kib",
                "from 1 to 1048576, got 0",
            ),
            (
                "limits = { http_receive_kib = 2000000 }",
                "limits.http_receive_kib",
                "from 1 to 1048576, got 2000000",
            ),
            (
                "limits = { resources = 8 }",
                "limits.resources",
                "from 16 to 1000000, got 8 (an instance needs",
            ),
            (
                "limits = { instance_reuse = 0 }",
                "limits.instance_reuse",
                "from 1 to 100000, got 0 (1 is",
            ),
        ];
        let good = GOOD.replace("limits = { memory_mib = 32, timeout_ms = 2000 }\n", "");
        for (table, field, reason) in cases {
            let msg = parse(&format!("{good}{table}\n"))
                .expect_err(table)
                .to_string();
            assert!(
                msg.contains(&format!("service \"product\": field `{field}`: ")),
                "{msg}"
            );
            assert!(msg.contains(reason), "{msg}");
        }
        let msg = parse(&format!(
            "{GOOD}[[service.subscribe]]\ntopic = \"a\"\nbackoff_ms = 500\nbackoff_max_ms = 100\n"
        ))
        .expect_err("backoff_max_ms below backoff_ms")
        .to_string();
        assert!(
            msg.contains("`subscribe.backoff_max_ms`: must be at least 500, got 100"),
            "{msg}"
        );
    }
}
