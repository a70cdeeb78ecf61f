//! Circuit breakers, one per called service: closed → (N consecutive failures) → open
//! (calls fail fast) → (after the open period) half-open (one probe) → closed or open.

use crate::registry::manifest::BreakerSpec;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
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

/// The breakers of every target service.
#[derive(Debug, Default)]
pub struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

/// A breaker's state, for the admin API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Closed,
    Open,
    HalfOpen,
}

impl Breakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call to `target` may go ahead now. When the open period is over, the
    /// first caller becomes the probe; if it has not reported after `probe_timeout`
    /// (its caller went away), the next caller probes.
    pub fn allow(&self, target: &str, probe_timeout: Duration) -> bool {
        self.allow_at(target, probe_timeout, Instant::now())
    }

    fn allow_at(&self, target: &str, probe_timeout: Duration, now: Instant) -> bool {
        let mut states = self.lock();
        let state = states
            .entry(target.to_string())
            .or_insert(State::Closed { failures: 0 });
        match *state {
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
        }
    }

    /// Reports how an allowed call to `target` ended.
    pub fn record(&self, target: &str, spec: &BreakerSpec, ok: bool) {
        self.record_at(target, spec, ok, Instant::now());
    }

    fn record_at(&self, target: &str, spec: &BreakerSpec, ok: bool, now: Instant) {
        let mut states = self.lock();
        let state = states
            .entry(target.to_string())
            .or_insert(State::Closed { failures: 0 });
        let open = State::Open {
            until: now + Duration::from_millis(spec.open_ms),
        };
        let next = match (*state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 >= spec.failures => open,
            (State::Closed { failures }, false) => State::Closed {
                failures: failures + 1,
            },
            (State::HalfOpen { .. }, false) => open,
            // A call allowed before the breaker opened: it is already open.
            (State::Open { .. }, false) => *state,
        };
        if matches!(next, State::Open { .. }) && !matches!(*state, State::Open { .. }) {
            tracing::warn!(target, "circuit breaker opened");
        }
        if matches!(next, State::Closed { .. }) && !matches!(*state, State::Closed { .. }) {
            tracing::info!(target, "circuit breaker closed");
        }
        *state = next;
    }

    pub fn status(&self, target: &str) -> Status {
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
    };

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
