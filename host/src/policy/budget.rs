//! The retry budget: retries stay a fraction of requests.

use crate::config::RetrySpec;
use parking_lot::Mutex;
use std::time::{Duration, Instant};

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
    pub(super) fn new(spec: &RetrySpec) -> RetryBudget {
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
        let mut state = self.state.lock();
        state.0 = (state.0 + self.earn).min(self.cap);
    }

    /// Takes a retry's token, if the budget has one.
    pub fn withdraw(&self) -> bool {
        let mut state = self.state.lock();
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

#[cfg(test)]
mod tests {
    use super::*;

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
