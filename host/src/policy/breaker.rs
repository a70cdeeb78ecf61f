//! Circuit breakers, one per service, for edge requests and service-to-service calls
//! alike: closed → (N consecutive failures, or an error rate over a window) → open
//! (calls fail fast) → (after the open period) half-open (one probe) → closed or open.

use crate::config::BreakerSpec;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        /// Consecutive failures.
        failures: u32,
        /// The error-rate window: when it began, calls and failures in it.
        since: Instant,
        calls: u32,
        failed: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is in flight since `since`; others fail fast until it reports
    /// (or until an open period has passed without a report: the probe's caller went
    /// away, and another call probes).
    HalfOpen {
        since: Instant,
    },
}

/// Runs `f` on `target`'s state, closed on first use (no allocation once it exists).
fn with_state<R>(
    states: &mut HashMap<String, State>,
    target: &str,
    now: Instant,
    f: impl FnOnce(&mut State) -> R,
) -> R {
    if let Some(state) = states.get_mut(target) {
        return f(state);
    }
    let mut state = closed(now);
    let result = f(&mut state);
    states.insert(target.to_string(), state);
    result
}

fn closed(now: Instant) -> State {
    State::Closed {
        failures: 0,
        since: now,
        calls: 0,
        failed: 0,
    }
}

/// The breakers of every target service.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

/// A breaker's state, for the admin API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Status {
    Closed,
    Open,
    HalfOpen,
}

impl Breakers {
    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock()
    }

    /// Whether a call to `target` may go ahead now. When the open period is over, the
    /// first caller becomes the probe; if it has not reported after `probe_timeout`
    /// (its caller went away), the next caller probes.
    pub(crate) fn allow(&self, target: &str, probe_timeout: Duration) -> bool {
        self.allow_at(target, probe_timeout, Instant::now())
    }

    fn allow_at(&self, target: &str, probe_timeout: Duration, now: Instant) -> bool {
        with_state(&mut self.lock(), target, now, |state| match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { since } if now >= since + probe_timeout => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        })
    }

    /// Reports how an allowed call to `target` ended.
    pub(crate) fn record(&self, target: &str, spec: &BreakerSpec, ok: bool) {
        self.record_at(target, spec, ok, Instant::now());
    }

    fn record_at(&self, target: &str, spec: &BreakerSpec, ok: bool, now: Instant) {
        with_state(&mut self.lock(), target, now, |state| {
            Self::step(state, target, spec, ok, now)
        });
    }

    fn step(state: &mut State, target: &str, spec: &BreakerSpec, ok: bool, now: Instant) {
        let open = State::Open {
            until: now + Duration::from_millis(spec.open_ms),
        };
        let next = match (*state, ok) {
            (
                State::Closed {
                    failures,
                    since,
                    calls,
                    failed,
                },
                _,
            ) => {
                let (since, calls, failed) = if now >= since + Duration::from_millis(spec.window_ms)
                {
                    (now, 0, 0)
                } else {
                    (since, calls, failed)
                };
                let calls = calls + 1;
                let failed = failed + u32::from(!ok);
                let failures = if ok { 0 } else { failures + 1 };
                let rate_exceeded = spec.error_rate_pct > 0
                    && calls >= spec.min_requests
                    && u64::from(failed) * 100 >= u64::from(spec.error_rate_pct) * u64::from(calls);
                if !ok && (failures >= spec.failures || rate_exceeded) {
                    open
                } else {
                    State::Closed {
                        failures,
                        since,
                        calls,
                        failed,
                    }
                }
            }
            (State::HalfOpen { .. }, true) => closed(now),
            (State::HalfOpen { .. }, false) => open,
            // A call allowed before the breaker opened: it stays open for its period
            // whatever that call's outcome.
            (State::Open { .. }, _) => *state,
        };
        if matches!(next, State::Open { .. }) && !matches!(*state, State::Open { .. }) {
            tracing::warn!(target, "circuit breaker opened");
        }
        if matches!(next, State::Closed { .. }) && !matches!(*state, State::Closed { .. }) {
            tracing::info!(target, "circuit breaker closed");
        }
        *state = next;
    }

    pub(crate) fn status(&self, target: &str) -> Status {
        match self.lock().get(target) {
            None | Some(State::Closed { .. }) => Status::Closed,
            Some(State::Open { .. }) => Status::Open,
            Some(State::HalfOpen { .. }) => Status::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: Duration = Duration::from_secs(10);

    const SPEC: BreakerSpec = BreakerSpec {
        failures: 3,
        open_ms: 1000,
        error_rate_pct: 0,
        min_requests: 20,
        window_ms: 10_000,
    };

    #[test]
    fn opens_on_an_error_rate_over_the_window() {
        let spec = BreakerSpec {
            failures: 100,
            error_rate_pct: 50,
            min_requests: 10,
            window_ms: 1000,
            ..SPEC
        };
        let b = Breakers::default();
        let t0 = Instant::now();
        // Alternating: never 100 in a row, but half of all calls fail.
        for i in 0..9 {
            b.record_at("p", &spec, i % 2 == 0, t0);
        }
        assert_eq!(b.status("p"), Status::Closed, "fewer than min_requests");
        b.record_at("p", &spec, false, t0);
        assert_eq!(b.status("p"), Status::Open, "5 of 10 failed");
        // A new window forgets old calls.
        let b = Breakers::default();
        for i in 0..9 {
            b.record_at("p", &spec, i % 2 == 0, t0);
        }
        let later = t0 + Duration::from_millis(1000);
        b.record_at("p", &spec, false, later);
        assert_eq!(b.status("p"), Status::Closed, "the window started over");
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = Breakers::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.allow_at("p", PROBE, t0));
            b.record_at("p", &SPEC, false, t0);
        }
        assert_eq!(b.status("p"), Status::Closed);
        b.record_at("p", &SPEC, true, t0);
        for _ in 0..3 {
            assert!(b.allow_at("p", PROBE, t0));
            b.record_at("p", &SPEC, false, t0);
        }
        assert_eq!(b.status("p"), Status::Open);
        assert!(
            !b.allow_at("p", PROBE, t0 + Duration::from_millis(999)),
            "fails fast while open"
        );
        let later = t0 + Duration::from_millis(1000);
        assert!(
            b.allow_at("p", PROBE, later),
            "the first call after the open period probes"
        );
        assert_eq!(b.status("p"), Status::HalfOpen);
        assert!(!b.allow_at("p", PROBE, later), "one probe at a time");
        assert!(
            b.allow_at("p", PROBE, later + PROBE),
            "a probe that never reported is replaced"
        );
        b.record_at("p", &SPEC, false, later);
        assert_eq!(b.status("p"), Status::Open, "a failed probe opens it again");
        let later = later + Duration::from_millis(1000);
        assert!(b.allow_at("p", PROBE, later));
        b.record_at("p", &SPEC, true, later);
        assert_eq!(b.status("p"), Status::Closed);
        assert_eq!(b.status("other"), Status::Closed, "breakers are per target");
    }
}
