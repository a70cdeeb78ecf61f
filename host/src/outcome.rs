//! The one classifier of outcomes: what a call's result *is* (success, client error,
//! server failure, host refusal; retriable or not), its status and `Retry-After`. The
//! commit gate, the circuit breaker, retries, canary analysis and the health gate all
//! ask [`Class`]; none of them decides on its own. The table in docs/architecture.md
//! ("Outcomes") is this file, row by row, and the tests below assert it.

use crate::runtime::InvokeError;
use http::StatusCode;
use std::time::Duration;

/// Why a call produced no response of the service's own: the invocation's failure, or
/// a refusal or fault of the host around it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DispatchError {
    /// The invocation itself failed (trap, timeout, memory, no or broken response, a
    /// handler error, no instance).
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    #[error("calls to the service are failing; its circuit breaker is open for {} ms", .0.as_millis())]
    BreakerOpen(Duration),
    #[error("the service is at its concurrency limit: {0}")]
    Overloaded(String),
    #[error("the service is out of routing: its health checks fail ({0})")]
    Unhealthy(String),
    #[error("the request kept conflicting with concurrent updates of the same data: {0}")]
    Contention(String),
    #[error("the service's state could not be saved: {0}")]
    Storage(String),
}

/// What an outcome is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A 1xx–3xx answer, or an event the handler acknowledged.
    Success,
    /// A 4xx answer: the caller's fault; the service did its job.
    ClientError,
    /// The service failed: a 5xx of its own, a trap, a timeout, its memory limit, no or
    /// a broken response, an event handler's error. `blamed` is whether the failure is
    /// held against the service by its breaker and canary analysis: not for a `503` it
    /// answers itself (a service it depends on is down), so one broken service does not
    /// open its callers' breakers or roll back their canaries.
    ServerFailure { retriable: bool, blamed: bool },
    /// The host refused the call or could not run it (breaker open, shed, unhealthy, no
    /// instance, contention, storage): no verdict on the service either way.
    HostRefusal { retriable: bool },
}

impl Class {
    /// The class of an answer the service gave with `status`.
    pub(crate) fn of_status(status: StatusCode) -> Class {
        match status.as_u16() {
            // 600 and above are not HTTP's: the runtime turns them into
            // `InvokeError::InvalidStatus` before anyone asks; as an answer, a success.
            ..=399 | 600.. => Class::Success,
            400..=499 => Class::ClientError,
            503 => Class::ServerFailure {
                retriable: true,
                blamed: false,
            },
            502 | 504 => Class::ServerFailure {
                retriable: true,
                blamed: true,
            },
            500..=599 => Class::ServerFailure {
                retriable: false,
                blamed: true,
            },
        }
    }

    /// Whether the invocation's writes, events and acknowledgement commit.
    pub(crate) fn commits(self) -> bool {
        matches!(self, Class::Success | Class::ClientError)
    }

    /// The verdict for the service's circuit breaker and its canary analysis: `Some(true)`
    /// a failure held against it, `Some(false)` a success, `None` no verdict.
    pub(crate) fn failed(self) -> Option<bool> {
        match self {
            Class::Success | Class::ClientError => Some(false),
            Class::ServerFailure { blamed: true, .. } => Some(true),
            Class::ServerFailure { blamed: false, .. } | Class::HostRefusal { .. } => None,
        }
    }

    /// Whether another attempt may help (idempotent requests only; the caller decides
    /// about the method).
    pub(crate) fn retriable(self) -> bool {
        match self {
            Class::Success | Class::ClientError => false,
            Class::ServerFailure { retriable, .. } | Class::HostRefusal { retriable } => retriable,
        }
    }
}

impl InvokeError {
    /// What the invocation's own failure is.
    pub(crate) fn class(&self) -> Class {
        match self {
            // The pool is full: the host's capacity, not the guest.
            InvokeError::NoCapacity(_) => Class::HostRefusal { retriable: true },
            // The component did not start (its start function trapped, an import did
            // not link): its own fault, and another instance may fare better.
            InvokeError::Instantiate(_) => Class::ServerFailure {
                retriable: true,
                blamed: true,
            },
            // Deterministic for the request: another attempt answers the same.
            InvokeError::NotASubscriber | InvokeError::InvalidStatus(_) => Class::ServerFailure {
                retriable: false,
                blamed: true,
            },
            InvokeError::Trap(_)
            | InvokeError::Timeout(_)
            | InvokeError::MemoryLimit(_)
            | InvokeError::NoResponse
            | InvokeError::ErrorResponse(_)
            | InvokeError::ResponseTooLarge
            | InvokeError::Rejected(_) => Class::ServerFailure {
                retriable: true,
                blamed: true,
            },
        }
    }

    /// The status the caller gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            InvokeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::Instantiate(_) | InvokeError::NoCapacity(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InvokeError::Trap(_)
            | InvokeError::MemoryLimit(_)
            | InvokeError::NoResponse
            | InvokeError::ErrorResponse(_)
            | InvokeError::ResponseTooLarge
            | InvokeError::NotASubscriber
            | InvokeError::InvalidStatus(_)
            | InvokeError::Rejected(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl DispatchError {
    pub(crate) fn class(&self) -> Class {
        match self {
            DispatchError::Invoke(e) => e.class(),
            // Another attempt of the whole request may read data that no longer races.
            DispatchError::Contention(_) => Class::HostRefusal { retriable: true },
            DispatchError::BreakerOpen(_)
            | DispatchError::Overloaded(_)
            | DispatchError::Unhealthy(_)
            | DispatchError::Storage(_) => Class::HostRefusal { retriable: false },
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            DispatchError::Invoke(e) => e.status(),
            DispatchError::BreakerOpen(_)
            | DispatchError::Overloaded(_)
            | DispatchError::Unhealthy(_)
            | DispatchError::Contention(_) => StatusCode::SERVICE_UNAVAILABLE,
            DispatchError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds for `Retry-After`: how long the refusal will last, where the host knows.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            DispatchError::BreakerOpen(open) => Some(open.as_secs().max(1)),
            DispatchError::Overloaded(_) | DispatchError::Unhealthy(_) => Some(1),
            DispatchError::Invoke(_) | DispatchError::Contention(_) | DispatchError::Storage(_) => {
                None
            }
        }
    }
}

/// The class of a call's result: the service's answer, or why there is none.
pub(crate) fn classify<T>(result: &Result<http::Response<T>, DispatchError>) -> Class {
    match result {
        Ok(response) => Class::of_status(response.status()),
        Err(error) => error.class(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of the table in docs/architecture.md.
    struct Row {
        status: u16,
        commits: bool,
        /// Breaker and canary analysis alike.
        failed: Option<bool>,
        retriable: bool,
        retry_after: Option<u64>,
    }

    fn answer(status: u16) -> Result<http::Response<()>, DispatchError> {
        let mut response = http::Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).expect("a valid status");
        Ok(response)
    }

    fn check(name: &str, result: Result<http::Response<()>, DispatchError>, row: Row) {
        let class = classify(&result);
        let status = match &result {
            Ok(response) => response.status(),
            Err(e) => e.status(),
        };
        let retry_after = result.as_ref().err().and_then(DispatchError::retry_after);
        assert_eq!(status.as_u16(), row.status, "{name}: status");
        assert_eq!(class.commits(), row.commits, "{name}: commits");
        assert_eq!(
            class.failed(),
            row.failed,
            "{name}: breaker and canary verdict"
        );
        assert_eq!(class.retriable(), row.retriable, "{name}: retried");
        assert_eq!(retry_after, row.retry_after, "{name}: Retry-After");
    }

    fn row(status: u16, commits: bool, failed: Option<bool>, retriable: bool) -> Row {
        Row {
            status,
            commits,
            failed,
            retriable,
            retry_after: None,
        }
    }

    #[test]
    fn the_answers_of_a_service() {
        check("200", answer(200), row(200, true, Some(false), false));
        check("302", answer(302), row(302, true, Some(false), false));
        check("404", answer(404), row(404, true, Some(false), false));
        check("429", answer(429), row(429, true, Some(false), false));
        check("guest 500", answer(500), row(500, false, Some(true), false));
        check("guest 501", answer(501), row(501, false, Some(true), false));
        check("guest 502", answer(502), row(502, false, Some(true), true));
        check("guest 503", answer(503), row(503, false, None, true));
        check("guest 504", answer(504), row(504, false, Some(true), true));
        check("guest 599", answer(599), row(599, false, Some(true), false));
        check(
            "not HTTP's 600",
            answer(600),
            row(600, true, Some(false), false),
        );
    }

    #[test]
    fn the_invocations_own_failures() {
        let invoke = |e: InvokeError| Err(DispatchError::Invoke(e));
        let failed = |status| row(status, false, Some(true), true);
        check(
            "trap",
            invoke(InvokeError::Trap("unreachable".into())),
            failed(502),
        );
        check(
            "timeout",
            invoke(InvokeError::Timeout(Duration::from_millis(100))),
            failed(504),
        );
        check(
            "memory",
            invoke(InvokeError::MemoryLimit(1 << 20)),
            failed(502),
        );
        check("no response", invoke(InvokeError::NoResponse), failed(502));
        check(
            "error response",
            invoke(InvokeError::ErrorResponse("x".into())),
            failed(502),
        );
        check(
            "too large",
            invoke(InvokeError::ResponseTooLarge),
            failed(502),
        );
        check(
            "handler error",
            invoke(InvokeError::Rejected("no".into())),
            failed(502),
        );
        check(
            "not a subscriber",
            invoke(InvokeError::NotASubscriber),
            row(502, false, Some(true), false),
        );
        check(
            "a status that is not HTTP's",
            invoke(InvokeError::InvalidStatus(602)),
            row(502, false, Some(true), false),
        );
        check(
            "no instance: the pool is full",
            invoke(InvokeError::NoCapacity("pool".into())),
            row(503, false, None, true),
        );
        check(
            "no instance: it did not start",
            invoke(InvokeError::Instantiate("start trapped".into())),
            row(503, false, Some(true), true),
        );
    }

    #[test]
    fn the_hosts_refusals() {
        let refused = |status, retriable, retry_after| Row {
            retry_after,
            ..row(status, false, None, retriable)
        };
        check(
            "breaker open",
            Err(DispatchError::BreakerOpen(Duration::from_millis(2500))),
            refused(503, false, Some(2)),
        );
        check(
            "breaker open briefly",
            Err(DispatchError::BreakerOpen(Duration::from_millis(300))),
            refused(503, false, Some(1)),
        );
        check(
            "overloaded",
            Err(DispatchError::Overloaded("queue full".into())),
            refused(503, false, Some(1)),
        );
        check(
            "unhealthy",
            Err(DispatchError::Unhealthy("sick".into())),
            refused(503, false, Some(1)),
        );
        check(
            "contention",
            Err(DispatchError::Contention("8 attempts".into())),
            refused(503, true, None),
        );
        check(
            "storage",
            Err(DispatchError::Storage("disk".into())),
            refused(500, false, None),
        );
    }
}
