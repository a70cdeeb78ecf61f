//! A token bucket per client key (governor's GCRA), with what the `RateLimit-*`
//! headers say about it.

use crate::config::RateLimitSpec;
use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// A token bucket per client key.
pub(crate) struct RateLimit {
    limiter: KeyedLimiter,
    pub(crate) spec: RateLimitSpec,
}

/// A rate-limit decision, with what the `RateLimit-*` headers say.
pub(crate) struct RateDecision {
    pub(crate) allowed: bool,
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// When a token is next available (0 if one is now).
    pub(crate) reset: Duration,
}

impl RateLimit {
    pub(super) fn new(spec: &RateLimitSpec) -> RateLimit {
        let per_second = NonZeroU32::new(spec.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(spec.burst()).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RateLimit {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            spec: spec.clone(),
        }
    }

    /// Forgets the buckets that have refilled, so idle and rotating clients cost nothing.
    /// O(keys): the registry's supervisor calls it, never the request path.
    pub(crate) fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Takes a token from `key`'s bucket, if there is one.
    pub(crate) fn check(&self, key: &str) -> RateDecision {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_buckets_are_forgotten_off_the_request_path() -> anyhow::Result<()> {
        let limit = RateLimit::new(&RateLimitSpec {
            per_second: 1000,
            burst: Some(1),
            key: crate::config::RateLimitKey::default(),
        });
        for client in 0..500 {
            assert!(
                limit
                    .check(&format!("10.0.{}.{}", client / 256, client % 256))
                    .allowed
            );
        }
        assert_eq!(limit.limiter.len(), 500, "checks never sweep");
        // Every bucket refills within a few milliseconds at 1000/s.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            limit.forget_idle();
            if limit.limiter.is_empty() {
                break;
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "buckets kept");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}
