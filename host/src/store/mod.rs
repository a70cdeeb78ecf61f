//! Where state lives: one ordered key-value space behind the [`Backend`] trait, so that
//! a second backend (NATS KV in cluster mode) can sit beside the embedded one, and
//! [`Storage`] over it, which keeps the durability promises whatever the backend: no
//! read returns a write before it is durable, and a failed flush stops the store. The
//! services' keyspaces and the event bus's logs are key layouts on top of it
//! ([`keys`]); `bus::unit` commits an invocation's effects in one atomic batch.

mod embedded;
mod guarded;
pub(crate) mod keys;

pub(crate) use embedded::SledStorage;
#[cfg(test)]
pub(crate) use guarded::tests as guarded_tests;
pub(crate) use guarded::{Storage, Ticket};

use std::future::Future;
use std::pin::Pin;

/// A storage failure: the backend could not read, write or flush.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("storage error: {0}")]
    Backend(String),
    /// A transaction's precondition no longer holds (e.g. the event it acknowledges was
    /// already acknowledged, or a replay moved the cursor); nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A flush failed earlier: the store accepts no more reads or writes until the host
    /// is restarted (fail-stop), so that nothing it answered 5xx for is read or persisted.
    #[error("the store stopped after a failed flush ({0}); restart the host")]
    Stopped(String),
}

/// A boxed future, so that the trait stays object-safe.
pub(crate) type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A stored key and its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// Writes applied together: `Some(value)` puts, `None` deletes.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Reads, as a transaction sees them.
pub(crate) trait ReadView {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The greatest key starting with `prefix`, and its value.
    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Entry>, StoreError>;

    /// The number after the one that ends the last key under `prefix` (keys built with
    /// [`keys::seq`] or [`keys::log`]), or `first` when there is no key there.
    fn next_seq(&self, prefix: &[u8], first: u64) -> Result<u64, StoreError> {
        Ok(self
            .last_with_prefix(prefix)?
            .map_or(first, |(key, _)| keys::trailing_u64(&key) + 1))
    }
}

/// An ordered key-value store with serialized atomic transactions: what a backend
/// provides. The rest of the host reaches it through [`Storage`].
pub(crate) trait Backend: ReadView + Send + Sync + 'static {
    /// Up to `limit` entries whose key starts with `prefix` and is greater than `after`,
    /// in key order.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// As [`Backend::scan`], keys only, without reading the values.
    fn scan_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Runs `build` with no other transaction in between, and applies the batch it
    /// returns atomically (all or none). An `Err` from `build` writes nothing. The writes
    /// are visible at once but durable only after [`Backend::durable`].
    fn transact(
        &self,
        build: &mut dyn FnMut(&dyn ReadView) -> Result<Batch, StoreError>,
    ) -> Result<(), StoreError>;

    /// Resolves once everything applied before the call is on disk (group commit:
    /// concurrent callers share one flush).
    fn durable(&self) -> StoreFuture<'static, ()>;

    /// Never write to disk again, not even on drop: a flush failed, and what is
    /// applied but not durable must not be persisted by a later flush.
    fn halt(&self);
}

/// Writes `contents` to `path` readable by the owner only (secrets in the data directory).
pub(crate) fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}
