//! The embedded backend: sled on local disk, one tree, serialized transactions, and
//! group commit. sled's own background flush is off: the group commit is the only
//! writer of the log to disk, so that a halted store writes nothing more.

use super::{Backend, Batch, Entry, ReadView, StoreError, StoreFuture};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use tokio::sync::watch;

/// sled under a data directory.
pub(crate) struct SledStorage {
    tree: sled::Tree,
    /// Serializes transactions: a transaction's reads and its batch see no other
    /// transaction in between. Held only while a batch is built and applied in memory,
    /// never across a flush.
    commit_lock: Mutex<()>,
    flusher: Arc<GroupCommit>,
}

impl SledStorage {
    /// Opens (or creates) the database under `dir`. sled takes a lock on the directory:
    /// a second host on the same directory fails here with a clear error.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<SledStorage> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create data directory {dir:?}"))?;
        let path = dir.join("state");
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()
            .with_context(|| format!("failed to open the state database {path:?}"))?;
        let tree = db
            .open_tree("data")
            .with_context(|| format!("failed to open the state database {path:?}"))?;
        Ok(SledStorage {
            tree,
            commit_lock: Mutex::new(()),
            flusher: GroupCommit::start(db),
        })
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl ReadView for SledStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        match self.tree.scan_prefix(prefix).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry.map_err(backend)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }
}

impl SledStorage {
    /// Entries whose key starts with `prefix` and is greater than `after`, in key order.
    fn range<'a>(
        &'a self,
        prefix: &'a [u8],
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_vec()),
            None => std::ops::Bound::Included(prefix.to_vec()),
        };
        self.tree
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |e| e.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
    }
}

impl Backend for SledStorage {
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.range(prefix, after)
            .take(limit)
            .map(|entry| {
                let (k, v) = entry.map_err(backend)?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn scan_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        // The values are sled's shared buffers: passed over, never copied.
        self.range(prefix, after)
            .take(limit)
            .map(|entry| Ok(entry.map_err(backend)?.0.to_vec()))
            .collect()
    }

    fn transact(
        &self,
        build: &mut dyn FnMut(&dyn ReadView) -> Result<Batch, StoreError>,
    ) -> Result<(), StoreError> {
        let _serialized = self.commit_lock.lock();
        let batch = build(self)?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.ops {
            match value {
                Some(v) => sled_batch.insert(key, v),
                None => sled_batch.remove(key),
            }
        }
        self.tree.apply_batch(sled_batch).map_err(backend)
    }

    fn durable(&self) -> StoreFuture<'static, ()> {
        let flusher = self.flusher.clone();
        Box::pin(async move { flusher.durable().await })
    }

    fn halt(&self) {
        self.flusher.halted.store(true, Ordering::SeqCst);
    }
}

impl Drop for SledStorage {
    fn drop(&mut self) {
        if self.flusher.halted.load(Ordering::SeqCst) {
            // Dropping sled's last handle flushes it: a halted store is left as the
            // last good flush left it on disk, like a crash, by keeping a handle
            // forever. Its file lock stays taken until the process exits, which a
            // stopped host must do anyway.
            tracing::warn!("the state database was halted: not flushing it on shutdown");
            std::mem::forget(self.flusher.db.clone());
            return;
        }
        // A clean shutdown leaves nothing to recover. Errors here can only be logged.
        if let Err(e) = self.flusher.db.flush() {
            tracing::error!(error = %e, "final flush of the state database failed");
        }
    }
}

/// Group commit: many committers wait for one flush. A committer takes a ticket after
/// its write is applied; the flusher reads the newest ticket before it flushes, so a
/// finished flush covers every ticket up to the one it read.
struct GroupCommit {
    /// Held here, not by the flush thread, so the database closes (and releases its
    /// directory lock) as soon as the storage and its keyspaces are dropped.
    db: sled::Db,
    /// Set by [`Backend::halt`]: the flusher writes nothing more.
    halted: AtomicBool,
    requested: AtomicU64,
    wake: mpsc::SyncSender<()>,
    done: watch::Sender<Flushed>,
}

#[derive(Debug, Clone, Default)]
struct Flushed {
    /// Every ticket up to this one is durable.
    upto: u64,
    /// The newest failed flush: the ticket it was for, and why.
    failed: Option<(u64, String)>,
}

impl GroupCommit {
    fn start(db: sled::Db) -> Arc<GroupCommit> {
        let (wake, woken) = mpsc::sync_channel(1);
        let (done, _) = watch::channel(Flushed::default());
        let gc = Arc::new(GroupCommit {
            db,
            halted: AtomicBool::new(false),
            requested: AtomicU64::new(0),
            wake,
            done,
        });
        // The flusher holds a weak reference: dropping the storage drops the sender,
        // which ends the thread.
        let weak = Arc::downgrade(&gc);
        std::thread::Builder::new()
            .name("microhost-flush".to_string())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let Some(gc) = weak.upgrade() else { return };
                    let target = gc.requested.load(Ordering::Acquire);
                    if target <= gc.done.borrow().upto {
                        continue;
                    }
                    if gc.halted.load(Ordering::SeqCst) {
                        gc.done.send_modify(|f| {
                            f.failed = Some((target, "the store is halted".to_string()));
                        });
                        continue;
                    }
                    match gc.db.flush() {
                        Ok(_) => {
                            gc.done.send_replace(Flushed {
                                upto: target,
                                failed: None,
                            });
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "flushing the state database failed");
                            gc.done
                                .send_modify(|f| f.failed = Some((target, e.to_string())));
                        }
                    }
                }
            })
            .expect("spawning the flush thread");
        gc
    }

    async fn durable(&self) -> Result<(), StoreError> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut done = self.done.subscribe();
        // A full channel means a wake-up is already pending; it will see this ticket.
        let _ = self.wake.try_send(());
        loop {
            {
                let flushed = done.borrow_and_update();
                if flushed.upto >= ticket {
                    return Ok(());
                }
                if let Some((failed, why)) = &flushed.failed
                    && *failed >= ticket
                {
                    return Err(StoreError::Backend(format!("flush failed: {why}")));
                }
            }
            if done.changed().await.is_err() {
                return Err(StoreError::Backend("the flusher stopped".to_string()));
            }
        }
    }
}
