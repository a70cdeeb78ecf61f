//! The running state of a route's policies (`config::PolicySpec` is the manifest side),
//! one [`Policy`] per service slot, applied by the dispatcher and the gateway: a keyed
//! rate limit (`rate`), a concurrency limit with a bounded queue (`shed`), a retry
//! budget (`budget`), a response cache (`cache`, its rules in `freshness`) and the circuit
//! breakers (`breaker`).

pub(crate) mod breaker;
mod budget;
mod cache;
mod freshness;
mod rate;
mod shed;

pub(crate) use budget::RetryBudget;
pub(crate) use cache::Cache;
pub(crate) use freshness::CacheControl;
pub(crate) use rate::RateLimit;
pub(crate) use shed::{Shed, Shedder};

use crate::config::PolicySpec;
use http::Method;
use std::time::Duration;

/// The policies of one service, with their state.
pub(crate) struct Policy {
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) concurrency: Option<Shedder>,
    pub(crate) budget: RetryBudget,
    pub(crate) cache: Option<Cache>,
    pub(crate) spec: PolicySpec,
    /// The service's in-flight gauge, looked up once.
    pub(crate) in_flight: std::sync::OnceLock<prometheus_client::metrics::gauge::Gauge>,
}

impl Policy {
    pub(crate) fn new(spec: &PolicySpec) -> Policy {
        Policy {
            rate_limit: spec.rate_limit.as_ref().map(RateLimit::new),
            concurrency: spec.concurrency.as_ref().map(Shedder::new),
            budget: RetryBudget::new(&spec.retry),
            cache: spec.cache.as_ref().map(Cache::new),
            spec: spec.clone(),
            in_flight: std::sync::OnceLock::new(),
        }
    }

    /// Tries a request may get: `retry.attempts` for idempotent methods, else one.
    pub(crate) fn attempts(&self, method: &Method) -> u32 {
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

    /// Housekeeping off the request path: forgets rate-limit buckets that have refilled.
    pub(crate) fn sweep(&self) {
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit.forget_idle();
        }
    }

    /// The delay before retry `n` (1-based): `backoff_ms`, doubling.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let factor = 1u64 << n.saturating_sub(1).min(10);
        Duration::from_millis(self.spec.retry.backoff_ms.saturating_mul(factor))
    }
}
