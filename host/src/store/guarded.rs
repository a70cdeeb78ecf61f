//! [`Storage`]: a backend with its durability promises kept in one place.
//!
//! - **No read returns a write before it is durable.** Every applied batch gets a
//!   [`Ticket`], taken before the batch becomes visible; a reader takes the current
//!   ticket after it read ([`Storage::ticket`]) and waits for it to be durable
//!   ([`Storage::durable_through`]) before it answers, so whatever it saw survives a
//!   crash.
//! - **A failed flush stops the store** (fail-stop): the backend is halted, so nothing
//!   applied since the last good flush is persisted by a later flush or on shutdown,
//!   and every read and write fails from then on with the reason
//!   ([`StoreError::Stopped`], also on `/healthz`). A 5xx then leaves no trace: after
//!   a restart the store holds what the last good flush held (plus, for a real disk
//!   error, whatever the kernel may have written: see docs/architecture.md).

use super::{Backend, Batch, Entry, ReadView, StoreError};
use parking_lot::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// A position in the order batches are applied in: a reader that took ticket `t` may
/// have seen every batch up to `t`, and none after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ticket(u64);

/// The host's store: a [`Backend`] behind the watermark and the fail-stop.
pub(crate) struct Storage {
    backend: Box<dyn Backend>,
    /// Serializes [`Storage::transact`], so that tickets follow the order batches are
    /// applied in. Held only while a batch is built and applied in memory.
    order: Mutex<()>,
    /// The newest ticket handed out; taken before the batch it is for becomes visible.
    issued: AtomicU64,
    /// The newest ticket whose batch the backend has applied (or refused).
    applied: watch::Sender<u64>,
    /// Every ticket up to this one is durable.
    durable: watch::Sender<u64>,
    /// Why the store stopped, once a flush failed.
    stopped: OnceLock<String>,
}

impl Storage {
    pub(crate) fn new(backend: impl Backend) -> Storage {
        Storage {
            backend: Box::new(backend),
            order: Mutex::new(()),
            issued: AtomicU64::new(0),
            applied: watch::channel(0).0,
            durable: watch::channel(0).0,
            stopped: OnceLock::new(),
        }
    }

    /// Why the store stopped, if it did.
    pub(crate) fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.stopped.get() {
            Some(why) => Err(StoreError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    fn stop(&self, why: &StoreError) {
        let why = match why {
            StoreError::Stopped(why) => why.clone(),
            other => other.to_string(),
        };
        if self.stopped.set(why.clone()).is_ok() {
            self.backend.halt();
            tracing::error!(
                reason = %why,
                "a flush failed: the store stopped and accepts no more reads or writes; restart the host"
            );
        }
    }

    /// Up to `limit` entries whose key starts with `prefix` and is greater than `after`,
    /// in key order.
    pub(crate) fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.check()?;
        self.backend.scan(prefix, after, limit)
    }

    /// As [`Storage::scan`], keys only: the values are not read.
    pub(crate) fn scan_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.check()?;
        self.backend.scan_keys(prefix, after, limit)
    }

    /// Runs `build` with no other transaction in between and applies the batch it
    /// returns atomically; visible at once, durable after [`Storage::durable`].
    pub(crate) fn transact(
        &self,
        build: &mut dyn FnMut(&dyn ReadView) -> Result<Batch, StoreError>,
    ) -> Result<(), StoreError> {
        self.check()?;
        let _order = self.order.lock();
        let mut ticket = None;
        let result = self.backend.transact(&mut |view| {
            let batch = build(view)?;
            if !batch.is_empty() && ticket.is_none() {
                // Before the batch is visible: a reader that sees it takes this ticket
                // or a later one.
                ticket = Some(self.issued.fetch_add(1, Ordering::SeqCst) + 1);
            }
            Ok(batch)
        });
        if let Some(ticket) = ticket {
            self.applied.send_replace(ticket);
        }
        result
    }

    /// Resolves once everything applied before the call is on disk. A failure stops
    /// the store.
    pub(crate) async fn durable(&self) -> Result<(), StoreError> {
        self.check()?;
        let upto = *self.applied.borrow();
        match self.backend.durable().await {
            Ok(()) => {
                self.durable.send_if_modified(|durable| {
                    let newer = upto > *durable;
                    if newer {
                        *durable = upto;
                    }
                    newer
                });
                Ok(())
            }
            Err(e) => {
                self.stop(&e);
                Err(StoreError::Stopped(
                    self.stopped().unwrap_or_default().to_string(),
                ))
            }
        }
    }

    /// The ticket a reader takes after its reads: everything it can have seen is at or
    /// before it.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.issued.load(Ordering::SeqCst))
    }

    /// Resolves once every batch up to `ticket` is durable, flushing if need be.
    pub(crate) async fn durable_through(&self, ticket: Ticket) -> Result<(), StoreError> {
        if *self.durable.borrow() >= ticket.0 {
            return Ok(());
        }
        // A batch with this ticket may still be finishing its apply (it is visible to
        // the reader already); once it is applied, one flush covers it.
        let mut applied = self.applied.subscribe();
        if applied
            .wait_for(|applied| *applied >= ticket.0)
            .await
            .is_err()
        {
            return Err(StoreError::Backend("the store is gone".to_string()));
        }
        if *self.durable.borrow() >= ticket.0 {
            return Ok(());
        }
        self.durable().await
    }
}

impl ReadView for Storage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check()?;
        self.backend.get(key)
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        self.check()?;
        self.backend.last_with_prefix(prefix)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{SledStorage, StoreFuture};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// A backend whose flushes fail on demand, as a disk that fails fsync does.
    pub(crate) struct FailingFlush {
        inner: SledStorage,
        pub(crate) fail: Arc<AtomicBool>,
    }

    impl FailingFlush {
        pub(crate) fn new(inner: SledStorage) -> FailingFlush {
            FailingFlush {
                inner,
                fail: Arc::default(),
            }
        }
    }

    impl ReadView for FailingFlush {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
            self.inner.last_with_prefix(prefix)
        }
    }

    impl Backend for FailingFlush {
        fn scan(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<Entry>, StoreError> {
            self.inner.scan(prefix, after, limit)
        }
        fn scan_keys(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<Vec<u8>>, StoreError> {
            self.inner.scan_keys(prefix, after, limit)
        }
        fn transact(
            &self,
            build: &mut dyn FnMut(&dyn ReadView) -> Result<Batch, StoreError>,
        ) -> Result<(), StoreError> {
            self.inner.transact(build)
        }
        fn durable(&self) -> StoreFuture<'static, ()> {
            if self.fail.load(Ordering::SeqCst) {
                return Box::pin(async {
                    Err(StoreError::Backend(
                        "fsync: Input/output error (injected)".to_string(),
                    ))
                });
            }
            self.inner.durable()
        }
        fn halt(&self) {
            self.inner.halt();
        }
    }

    fn put(storage: &Storage, key: &str, value: &str) -> Result<(), StoreError> {
        storage.transact(&mut |_| {
            let mut batch = Batch::default();
            batch.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
            Ok(batch)
        })
    }

    #[tokio::test]
    async fn a_reader_waits_for_what_it_saw_to_be_durable() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let storage = Storage::new(SledStorage::open(dir.path())?);
        assert_eq!(storage.ticket(), Ticket(0));
        storage.durable_through(storage.ticket()).await?;
        put(&storage, "a", "1")?;
        // Applied, visible, not yet durable: the reader's ticket covers it.
        assert_eq!(storage.get(b"a")?, Some(b"1".to_vec()));
        let ticket = storage.ticket();
        assert_eq!(ticket, Ticket(1));
        assert_eq!(*storage.durable.borrow(), 0);
        storage.durable_through(ticket).await?;
        assert_eq!(*storage.durable.borrow(), 1);
        // An empty batch takes no ticket.
        storage.transact(&mut |_| Ok(Batch::default()))?;
        assert_eq!(storage.ticket(), Ticket(1));
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_flush_stops_the_store_and_persists_nothing_after_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let backend = FailingFlush::new(SledStorage::open(dir.path())?);
        let fail = backend.fail.clone();
        let storage = Storage::new(backend);
        put(&storage, "kept", "1")?;
        storage.durable().await?;
        fail.store(true, Ordering::SeqCst);
        put(&storage, "lost", "2")?;
        let err = storage.durable().await.err();
        assert!(matches!(err, Some(StoreError::Stopped(ref why)) if why.contains("injected")));
        assert!(storage.stopped().is_some_and(|why| why.contains("fsync")));
        // Fail-stop: no reads (the failed batch is visible in memory) and no writes.
        assert!(matches!(storage.get(b"lost"), Err(StoreError::Stopped(_))));
        assert!(matches!(storage.get(b"kept"), Err(StoreError::Stopped(_))));
        assert!(matches!(
            put(&storage, "more", "3"),
            Err(StoreError::Stopped(_))
        ));
        // What reached the files is what a crash (or kill -9) leaves: a copy of the
        // directory now, with the halted store never flushing again, not even on drop.
        drop(storage);
        let copy = tempfile::tempdir()?;
        copy_dir(dir.path(), copy.path())?;
        let reopened = Storage::new(SledStorage::open(copy.path())?);
        assert_eq!(reopened.get(b"kept")?, Some(b"1".to_vec()));
        assert_eq!(
            reopened.get(b"lost")?,
            None,
            "the batch answered 5xx left no trace"
        );
        Ok(())
    }

    /// Copies a directory tree (the state of the files as the kernel has them).
    pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy_dir(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), target)?;
            }
        }
        Ok(())
    }
}
