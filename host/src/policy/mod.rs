//! The running state of a route's policies (`config::PolicySpec` is the manifest side): a keyed
//! token-bucket rate limiter, a concurrency limit with a bounded queue, a retry budget,
//! a response cache, and the circuit breakers. One [`Policy`] per service slot; the
//! dispatcher and the gateway apply them.

pub mod breaker;

use crate::config::{
    CacheSpec, ConcurrencySpec, FallbackSpec, PolicySpec, RateLimitSpec, RetrySpec,
};
use bytes::Bytes;
use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

/// The policies of one service, with their state.
pub struct Policy {
    pub rate_limit: Option<RateLimit>,
    pub concurrency: Option<Shedder>,
    pub budget: RetryBudget,
    pub cache: Option<Cache>,
    pub spec: PolicySpec,
    /// The service's in-flight gauge, looked up once.
    pub in_flight: std::sync::OnceLock<prometheus_client::metrics::gauge::Gauge>,
}

impl Policy {
    pub fn new(spec: &PolicySpec) -> Policy {
        Policy {
            rate_limit: spec.rate_limit.as_ref().map(RateLimit::new),
            concurrency: spec.concurrency.as_ref().map(Shedder::new),
            budget: RetryBudget::new(&spec.retry),
            cache: spec.cache.as_ref().map(Cache::new),
            spec: spec.clone(),
            in_flight: std::sync::OnceLock::new(),
        }
    }

    /// The policies and their state now, for the admin API.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "rate_limit": self.rate_limit.as_ref().map(|r| serde_json::json!({
                "per_second": r.spec.per_second,
                "burst": r.spec.burst(),
                "key": format!("{:?}", r.spec.key).to_lowercase(),
            })),
            "concurrency": self.concurrency.as_ref().map(|s| serde_json::json!({
                "max": s.spec.max,
                "queue": s.spec.queue,
                "running": s.running(),
                "queued": s.queued(),
            })),
            "retry": { "attempts": self.spec.retry.attempts, "budget_pct": self.spec.retry.budget_pct },
            "cache": self.cache.as_ref().map(|c| serde_json::json!({
                "ttl_ms": c.spec.ttl_ms,
                "entries": c.len(),
            })),
            "fallback": match &self.spec.fallback {
                FallbackSpec::Problem => "problem",
                FallbackSpec::Cached => "cached",
                FallbackSpec::Static { .. } => "static",
            },
            "cors": self.spec.cors.is_some(),
        })
    }

    /// Tries a request may get: `retry.attempts` for idempotent methods, else one.
    pub fn attempts(&self, method: &Method) -> u32 {
        let idempotent = matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        if idempotent {
            self.spec.retry.attempts
        } else {
            1
        }
    }

    /// The delay before retry `n` (1-based): `backoff_ms`, doubling.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u64 << n.saturating_sub(1).min(10);
        Duration::from_millis(self.spec.retry.backoff_ms.saturating_mul(factor))
    }
}

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// A token bucket per client key.
pub struct RateLimit {
    limiter: KeyedLimiter,
    pub spec: RateLimitSpec,
    checks: AtomicU64,
}

/// A rate-limit decision, with what the `RateLimit-*` headers say.
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// When a token is next available (0 if one is now).
    pub reset: Duration,
}

impl RateLimit {
    fn new(spec: &RateLimitSpec) -> RateLimit {
        let per_second = NonZeroU32::new(spec.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(spec.burst()).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RateLimit {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            spec: spec.clone(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a token from `key`'s bucket, if there is one.
    pub fn check(&self, key: &str) -> RateDecision {
        // Forget buckets that have refilled now and then, so idle clients cost nothing.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
        }
        let limit = self.spec.burst();
        let key = key.to_string();
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // Until the bucket is full again.
                let missing = f64::from(limit.saturating_sub(remaining));
                RateDecision {
                    allowed: true,
                    limit,
                    remaining,
                    reset: Duration::from_secs_f64(
                        missing / f64::from(self.spec.per_second.max(1)),
                    ),
                }
            }
            Err(not_until) => RateDecision {
                allowed: false,
                limit,
                remaining: 0,
                reset: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Every slot busy and the queue full.
    QueueFull,
    /// Waited in the queue for `queue_timeout_ms` without a turn.
    QueueTimeout,
}

/// A concurrency limit with a bounded wait queue.
pub struct Shedder {
    permits: Arc<Semaphore>,
    queued: AtomicU32,
    pub spec: ConcurrencySpec,
}

impl Shedder {
    fn new(spec: &ConcurrencySpec) -> Shedder {
        Shedder {
            permits: Arc::new(Semaphore::new(spec.max as usize)),
            queued: AtomicU32::new(0),
            spec: spec.clone(),
        }
    }

    /// A turn to run, waiting in the queue if there is room in it.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.spec.queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::QueueFull);
        }
        // Leaves the queue however the wait ends, a dropped request included.
        struct Queued<'a>(&'a AtomicU32);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let queued = Queued(&self.queued);
        let waited = tokio::time::timeout(
            Duration::from_millis(self.spec.queue_timeout_ms),
            self.permits.clone().acquire_owned(),
        )
        .await;
        drop(queued);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Shed::QueueTimeout),
        }
    }

    /// Requests running now.
    pub fn running(&self) -> u32 {
        self.spec
            .max
            .saturating_sub(self.permits.available_permits() as u32)
    }

    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }
}

/// Tokens for retries: each request earns `budget_pct` % of one, `min_per_sec` come
/// in every second, and the balance is capped, so retries stay a fraction of traffic.
/// Counted in thousandths of a retry.
pub struct RetryBudget {
    earn: u64,
    min_per_sec: u64,
    cap: u64,
    state: Mutex<(u64, Instant)>,
}

/// One retry, in budget units.
const RETRY_COST: u64 = 1000;

impl RetryBudget {
    fn new(spec: &RetrySpec) -> RetryBudget {
        let earn = u64::from(spec.budget_pct) * RETRY_COST / 100;
        let min_per_sec = u64::from(spec.min_per_sec);
        RetryBudget {
            earn,
            min_per_sec,
            cap: min_per_sec * RETRY_COST + earn * 100,
            state: Mutex::new((min_per_sec * RETRY_COST, Instant::now())),
        }
    }

    /// A request came in.
    pub fn deposit(&self) {
        let mut state = lock(&self.state);
        state.0 = (state.0 + self.earn).min(self.cap);
    }

    /// Takes a retry's token, if the budget has one.
    pub fn withdraw(&self) -> bool {
        let mut state = lock(&self.state);
        // `min_per_sec` retries a second is `min_per_sec` units a millisecond.
        let ms = state.1.elapsed().as_millis() as u64;
        state.0 = (state.0 + ms * self.min_per_sec).min(self.cap);
        state.1 += Duration::from_millis(ms);
        if state.0 >= RETRY_COST {
            state.0 -= RETRY_COST;
            true
        } else {
            false
        }
    }
}

/// A cached response.
#[derive(Clone)]
struct Entry {
    /// The request path, for invalidation by writes.
    path: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    ttl: Duration,
}

/// `GET` responses of one service's active version.
pub struct Cache {
    spec: CacheSpec,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// The version the entries came from; another one empties the cache.
    version: String,
    entries: HashMap<String, Entry>,
    /// Keys, oldest first, for eviction.
    order: VecDeque<String>,
}

/// The directives of a `Cache-Control` header that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let directive = directive.trim().to_ascii_lowercase();
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim().to_string(), Some(a.trim().trim_matches('"'))),
                    None => (directive.clone(), None),
                };
                match (name.as_str(), arg) {
                    ("no-store", _) => cc.no_store = true,
                    ("no-cache", _) => cc.no_cache = true,
                    ("private", _) => cc.private = true,
                    ("max-age", Some(a)) => cc.max_age = a.parse().ok(),
                    ("s-maxage", Some(a)) => cc.s_maxage = a.parse().ok(),
                    _ => {}
                }
            }
        }
        if headers
            .get(header::PRAGMA)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        {
            cc.no_cache = true;
        }
        cc
    }
}

impl Cache {
    fn new(spec: &CacheSpec) -> Cache {
        Cache {
            spec: spec.clone(),
            state: Mutex::new(CacheState::default()),
        }
    }

    /// The cache key of a request: whose answers it may share (see `cache_owner`) and
    /// what it asks for.
    pub fn key(owner: &str, uri: &http::Uri) -> String {
        let what = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{owner}\n{what}")
    }

    /// Drops every entry for `path` (any query, anyone's).
    pub fn invalidate_path(&self, path: &str) {
        let mut state = lock(&self.state);
        let CacheState { entries, order, .. } = &mut *state;
        entries.retain(|_, entry| entry.path != path);
        order.retain(|key| entries.contains_key(key));
    }

    fn state_for(&self, version: &str) -> parking_lot::MutexGuard<'_, CacheState> {
        let mut state = lock(&self.state);
        if state.version != version {
            state.entries.clear();
            state.order.clear();
            state.version = version.to_string();
        }
        state
    }

    /// The cached response for `key` of `version`: a fresh one only, or one past its
    /// lifetime too (`stale_ok`, for fallbacks).
    pub fn get(&self, version: &str, key: &str, stale_ok: bool) -> Option<http::Response<Bytes>> {
        let state = self.state_for(version);
        let entry = state.entries.get(key)?;
        let age = entry.stored.elapsed();
        if age >= entry.ttl && !stale_ok {
            return None;
        }
        let mut response = http::Response::new(entry.body.clone());
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age.as_secs()));
        Some(response)
    }

    /// Keeps `response` (answered by `version`) if it may be cached.
    pub fn store(&self, version: &str, key: &str, path: &str, response: &http::Response<Bytes>) {
        if response.status() != StatusCode::OK
            || response.headers().contains_key(header::SET_COOKIE)
            || response.headers().contains_key(header::VARY)
            || response.body().len() as u64 > self.spec.max_entry_kib.saturating_mul(1024)
        {
            return;
        }
        let cc = CacheControl::parse(response.headers());
        if cc.no_store || cc.no_cache || cc.private {
            return;
        }
        let ttl = match cc.s_maxage.or(cc.max_age) {
            Some(0) => return,
            Some(secs) => Duration::from_secs(secs),
            None => Duration::from_millis(self.spec.ttl_ms),
        };
        let entry = Entry {
            path: path.to_string(),
            status: response.status(),
            headers: response.headers().clone(),
            body: response.body().clone(),
            stored: Instant::now(),
            ttl,
        };
        let mut state = self.state_for(version);
        if state.entries.insert(key.to_string(), entry).is_none() {
            state.order.push_back(key.to_string());
        }
        while state.entries.len() > self.spec.max_entries {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            state.entries.remove(&oldest);
        }
    }

    /// Entries now held.
    pub fn len(&self) -> usize {
        lock(&self.state).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, Max-Age=60, s-maxage=\"30\""),
        );
        let cc = CacheControl::parse(&h);
        assert_eq!((cc.max_age, cc.s_maxage), (Some(60), Some(30)));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(CacheControl::parse(&h).no_store);
    }

    fn ok(body: &'static str, cc: Option<&'static str>) -> http::Response<Bytes> {
        let mut r = http::Response::new(Bytes::from_static(body.as_bytes()));
        if let Some(cc) = cc {
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
        }
        r
    }

    #[test]
    fn cache_honours_directives_versions_and_size() {
        let cache = Cache::new(&CacheSpec {
            ttl_ms: 60_000,
            max_entries: 2,
            max_entry_kib: 1,
        });
        cache.store("v1", "a", "/a", &ok("a", None));
        assert!(cache.get("v1", "a", false).is_some());
        cache.store("v1", "b", "/b", &ok("b", Some("no-store")));
        cache.store("v1", "c", "/c", &ok("c", Some("private")));
        cache.store("v1", "d", "/d", &ok("d", Some("max-age=0")));
        assert_eq!(
            cache.len(),
            1,
            "no-store, private and max-age=0 are not kept"
        );
        cache.store("v1", "e", "/e", &ok("e", None));
        cache.store("v1", "f", "/f", &ok("f", None));
        assert!(cache.get("v1", "a", true).is_none(), "oldest evicted");
        assert!(
            cache.get("v2", "f", true).is_none(),
            "another version empties it"
        );
        assert!(cache.is_empty());
        let big = ok(Box::leak("x".repeat(2048).into_boxed_str()), None);
        cache.store("v2", "big", "/big", &big);
        assert!(cache.is_empty(), "too large to keep");
        cache.store("v2", "x\n/p?q=1", "/p", &ok("p", None));
        cache.store("v2", "y\n/p", "/p", &ok("p", None));
        cache.store("v2", "y\n/other", "/other", &ok("o", None));
        cache.invalidate_path("/p");
        assert_eq!(cache.len(), 1, "a write to /p drops its entries, whoever's");
    }

    #[test]
    fn retry_budget_is_a_fraction_of_requests() {
        let budget = RetryBudget::new(&RetrySpec {
            attempts: 3,
            budget_pct: 20,
            min_per_sec: 0,
            backoff_ms: 1,
        });
        let mut granted = 0;
        for _ in 0..100 {
            budget.deposit();
            if budget.withdraw() {
                granted += 1;
            }
            if budget.withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 20);
    }
}
