//! Load shedding: a concurrency limit with a bounded wait queue.

use crate::config::ConcurrencySpec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// Every slot busy and the queue full.
    QueueFull,
    /// Waited in the queue for `queue_timeout_ms` without a turn.
    QueueTimeout,
}

/// A concurrency limit with a bounded wait queue.
pub(crate) struct Shedder {
    permits: Arc<Semaphore>,
    queued: AtomicU32,
    pub(crate) spec: ConcurrencySpec,
}

impl Shedder {
    pub(super) fn new(spec: &ConcurrencySpec) -> Shedder {
        Shedder {
            permits: Arc::new(Semaphore::new(spec.max as usize)),
            queued: AtomicU32::new(0),
            spec: spec.clone(),
        }
    }

    /// A turn to run, waiting in the queue if there is room in it.
    pub(crate) async fn enter(&self) -> Result<OwnedSemaphorePermit, Shed> {
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
    pub(crate) fn running(&self) -> u32 {
        self.spec
            .max
            .saturating_sub(self.permits.available_permits() as u32)
    }

    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }
}
