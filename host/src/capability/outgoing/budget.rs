//! What one invocation may send and receive over outgoing HTTP, across all its calls
//! (to services and to outside hosts): bytes of request headers and bodies
//! (`limits.http_send_kib`) and of response headers and bodies
//! (`limits.http_receive_kib`), counted as they pass. A call that would go over fails
//! with the WIT error (`HTTP-request-body-size` / `HTTP-response-body-size`), the host
//! logs it once per invocation, and nothing more is read or buffered for it.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use wasmtime_wasi_http::Error as HttpError;

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Send,
    Receive,
}

/// One invocation's outgoing HTTP budget, shared by its calls and their bodies (which
/// run on other tasks).
#[derive(Debug)]
pub(crate) struct HttpBudget {
    /// The service, for the log.
    service: String,
    sent: AtomicUsize,
    received: AtomicUsize,
    max_sent: usize,
    max_received: usize,
    /// A budget was overrun and the host said so (once per invocation).
    logged: AtomicBool,
}

impl HttpBudget {
    pub(crate) fn new(service: &str, max_sent: usize, max_received: usize) -> HttpBudget {
        HttpBudget {
            service: service.to_string(),
            sent: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            max_sent,
            max_received,
            logged: AtomicBool::new(false),
        }
    }

    fn parts(&self, direction: Direction) -> (&AtomicUsize, usize) {
        match direction {
            Direction::Send => (&self.sent, self.max_sent),
            Direction::Receive => (&self.received, self.max_received),
        }
    }

    /// Bytes still to spend in `direction`.
    pub(crate) fn remaining(&self, direction: Direction) -> usize {
        let (spent, max) = self.parts(direction);
        max.saturating_sub(spent.load(Ordering::Relaxed))
    }

    /// Whether `direction`'s budget has been overrun.
    pub(crate) fn overrun(&self, direction: Direction) -> bool {
        let (spent, max) = self.parts(direction);
        spent.load(Ordering::Relaxed) > max
    }

    /// Spends `bytes` in `direction`; over the budget, the error the guest sees (and
    /// the budget stays spent).
    pub(crate) fn spend(&self, direction: Direction, bytes: usize) -> Result<(), HttpError> {
        let (spent, max) = self.parts(direction);
        let add = |n: usize| Some(n.saturating_add(bytes));
        let before = match spent.fetch_update(Ordering::Relaxed, Ordering::Relaxed, add) {
            Ok(n) | Err(n) => n,
        };
        let total = before.saturating_add(bytes);
        if total <= max {
            return Ok(());
        }
        Err(self.exhaust(direction))
    }

    /// Marks `direction`'s budget overrun (a call that would need more than is left),
    /// logs it once per invocation, and returns the error the guest sees.
    pub(crate) fn exhaust(&self, direction: Direction) -> HttpError {
        let (spent, max) = self.parts(direction);
        spent.fetch_max(max.saturating_add(1), Ordering::Relaxed);
        if !self.logged.swap(true, Ordering::Relaxed) {
            let field = match direction {
                Direction::Send => "limits.http_send_kib",
                Direction::Receive => "limits.http_receive_kib",
            };
            tracing::warn!(service = %self.service, budget = max, field, "outgoing HTTP budget spent");
        }
        self.error(direction)
    }

    /// The WIT error of an overrun in `direction`, naming the budget in bytes.
    pub(crate) fn error(&self, direction: Direction) -> HttpError {
        let (_, max) = self.parts(direction);
        match direction {
            Direction::Send => HttpError::HttpRequestBodySize(Some(max as u64)),
            Direction::Receive => HttpError::HttpResponseBodySize(Some(max as u64)),
        }
    }
}

/// Bytes of a header section, as counted against the budget: names and values.
pub(crate) fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

/// A body whose data frames are spent from a budget as they pass; the frame that would
/// overrun it ends the body with the budget's error instead.
pub(crate) struct Metered<B> {
    inner: B,
    budget: std::sync::Arc<HttpBudget>,
    direction: Direction,
    failed: bool,
}

impl<B> Metered<B> {
    pub(crate) fn new(
        inner: B,
        budget: std::sync::Arc<HttpBudget>,
        direction: Direction,
    ) -> Metered<B> {
        Metered {
            inner,
            budget,
            direction,
            failed: false,
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes, Error = HttpError> + Unpin,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(e) = self.budget.spend(self.direction, data.len())
        {
            self.failed = true;
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;

    #[test]
    fn a_budget_is_spent_once_and_stays_spent() {
        let budget = HttpBudget::new("orders", 10, 100);
        assert!(budget.spend(Direction::Send, 6).is_ok());
        assert_eq!(budget.remaining(Direction::Send), 4);
        assert!(matches!(
            budget.spend(Direction::Send, 5),
            Err(HttpError::HttpRequestBodySize(Some(10)))
        ));
        assert!(budget.overrun(Direction::Send));
        assert!(budget.spend(Direction::Send, 0).is_err(), "still spent");
        assert_eq!(budget.remaining(Direction::Send), 0);
        // The other direction has its own budget.
        assert!(budget.spend(Direction::Receive, 100).is_ok());
        assert!(matches!(
            budget.spend(Direction::Receive, 1),
            Err(HttpError::HttpResponseBodySize(Some(100)))
        ));
    }

    #[tokio::test]
    async fn a_metered_body_ends_with_the_error_at_the_frame_over_budget() -> anyhow::Result<()> {
        let budget = Arc::new(HttpBudget::new("orders", 1000, 2500));
        let frames: Vec<_> = (0..10)
            .map(|_| Ok(Frame::data(Bytes::from(vec![0; 1000]))))
            .collect();
        let body = Frames(frames.into_iter());
        let mut metered = Metered::new(body, budget.clone(), Direction::Receive);
        let mut passed = 0;
        let mut error = None;
        while let Some(frame) = metered.frame().await {
            match frame {
                Ok(frame) => passed += frame.data_ref().map_or(0, Bytes::len),
                Err(e) => error = Some(e),
            }
        }
        assert_eq!(passed, 2000, "two frames fit, the third does not");
        assert!(matches!(
            error,
            Some(HttpError::HttpResponseBodySize(Some(2500)))
        ));
        Ok(())
    }

    /// A body of frames that are all ready.
    struct Frames(std::vec::IntoIter<Result<Frame<Bytes>, HttpError>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = HttpError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
            Poll::Ready(self.0.next())
        }
    }
}
