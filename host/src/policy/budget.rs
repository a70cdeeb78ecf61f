//! The retry budget, tower's `TpsBudget` (finagle's and linkerd's design): retries stay a
//! fraction of the requests of the last [`BUDGET_WINDOW`].

use crate::config::RetrySpec;
use std::time::Duration;
use tower::retry::budget::{Budget as _, TpsBudget};

/// How long a request's deposit counts, and the span `min_per_sec` is granted over
/// (tower's and finagle's default).
pub(super) const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Tokens for retries: every request deposits `budget_pct` % of a retry, which counts
/// for [`BUDGET_WINDOW`], and `min_per_sec` retries a second are allowed on top (as
/// `min_per_sec` × 10 per window), so retries cannot multiply load.
pub(crate) struct RetryBudget {
    budget: TpsBudget,
    /// `TpsBudget` deposits once per call and a retry costs a whole number of deposits,
    /// so `budget_pct` % is `deposits` calls per request at `100 / gcd(budget_pct, 100)`
    /// a retry: exact for every percentage, where one call at `100 / budget_pct` (cut to
    /// a whole number) would turn 40 % into 50 % and 60 % into 100 %.
    deposits: u32,
}

/// Deposits per request and retries per deposit (what `TpsBudget::new` takes as
/// `retry_percent`) that make `pct` % of a retry per request exactly.
fn split(pct: u32) -> (u32, f32) {
    let pct = pct.min(100);
    let g = gcd(pct, 100);
    // `g` divides 100, so `1 / (g / 100)` is a whole number and survives `f32`.
    (pct / g, g as f32 / 100.0)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl RetryBudget {
    pub(super) fn new(spec: &RetrySpec) -> RetryBudget {
        let (deposits, retry_percent) = split(spec.budget_pct);
        // `TpsBudget` asserts this bound; no route retries two billion times a second.
        let min_per_sec = spec.min_per_sec.min(i32::MAX as u32 - 1);
        RetryBudget {
            budget: TpsBudget::new(BUDGET_WINDOW, min_per_sec, retry_percent),
            deposits,
        }
    }

    /// A request came in.
    pub(crate) fn deposit(&self) {
        for _ in 0..self.deposits {
            self.budget.deposit();
        }
    }

    /// Takes a retry's token, if the budget has one.
    pub(crate) fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(budget_pct: u32, min_per_sec: u32) -> RetryBudget {
        RetryBudget::new(&RetrySpec {
            attempts: 3,
            budget_pct,
            min_per_sec,
            backoff_ms: 1,
        })
    }

    /// Retries granted until the budget says no (at most `limit`).
    fn drain(budget: &RetryBudget, limit: u32) -> u32 {
        (0..limit).take_while(|_| budget.withdraw()).count() as u32
    }

    #[test]
    fn retry_budget_is_a_fraction_of_requests() {
        let budget = with(20, 0);
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

    #[test]
    fn every_percentage_is_exact() {
        for pct in 0..=100 {
            let budget = with(pct, 0);
            for _ in 0..100 {
                budget.deposit();
            }
            assert_eq!(drain(&budget, 1000), pct, "budget_pct = {pct}");
        }
        // 7 % of 300 requests is 21 retries, not 300 / 14.
        let budget = with(7, 0);
        for _ in 0..300 {
            budget.deposit();
        }
        assert_eq!(drain(&budget, 1000), 21);
    }

    #[test]
    fn min_per_sec_is_granted_over_the_window_without_requests() {
        let budget = with(20, 3);
        assert_eq!(drain(&budget, 1000), 3 * BUDGET_WINDOW.as_secs() as u32);
        let budget = with(0, 0);
        budget.deposit();
        assert!(
            !budget.withdraw(),
            "no percentage and no minimum: no retries"
        );
    }

    #[test]
    fn splits_are_whole() {
        assert_eq!(split(20), (1, 0.2));
        assert_eq!(split(40), (2, 0.2));
        assert_eq!(split(33), (33, 0.01));
        assert_eq!(split(0), (0, 1.0));
        assert_eq!(split(100), (1, 1.0));
    }
}
