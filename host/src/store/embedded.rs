//! The embedded backend: sled on local disk, one tree per service, with group commit.

use super::{Keyspace, Storage, StoreError, StoreFuture, WriteSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tokio::sync::watch;

/// Separates a bucket name from a key inside a service's tree. Bucket names are
/// validated to never contain it, so the encoding is unambiguous.
const BUCKET_SEPARATOR: u8 = 0;

/// sled under a data directory.
pub struct SledStorage {
    db: sled::Db,
    flusher: Arc<GroupCommit>,
}

impl SledStorage {
    /// Opens (or creates) the database under `dir`. sled takes a lock on the directory:
    /// a second host on the same directory fails here with a clear error.
    pub fn open(dir: &Path) -> anyhow::Result<SledStorage> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create data directory {dir:?}"))?;
        let db = sled::Config::new()
            .path(dir.join("state"))
            .open()
            .with_context(|| format!("failed to open the state database in {dir:?}"))?;
        let flusher = GroupCommit::start(db.clone());
        Ok(SledStorage { db, flusher })
    }
}

impl Storage for SledStorage {
    fn keyspace(&self, service: &str) -> Result<Arc<dyn Keyspace>, StoreError> {
        let tree = self
            .db
            .open_tree(format!("kv/{service}"))
            .map_err(|e| StoreError(format!("failed to open keyspace of {service:?}: {e}")))?;
        Ok(Arc::new(SledKeyspace {
            tree,
            flusher: self.flusher.clone(),
        }))
    }
}

impl Drop for SledStorage {
    fn drop(&mut self) {
        // A clean shutdown leaves nothing to recover. Errors here can only be logged.
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "final flush of the state database failed");
        }
    }
}

struct SledKeyspace {
    tree: sled::Tree,
    flusher: Arc<GroupCommit>,
}

fn encode(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(BUCKET_SEPARATOR);
    k.extend_from_slice(key.as_bytes());
    k
}

fn backend(e: sled::Error) -> StoreError {
    StoreError(e.to_string())
}

impl Keyspace for SledKeyspace {
    fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(encode(bucket, key))
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn keys(&self, bucket: &str) -> Result<Vec<String>, StoreError> {
        let prefix = encode(bucket, "");
        self.tree
            .scan_prefix(&prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                String::from_utf8(k[prefix.len()..].to_vec())
                    .map_err(|_| StoreError("stored key is not valid UTF-8".to_string()))
            })
            .collect()
    }

    fn commit(&self, writes: WriteSet) -> StoreFuture<'static, ()> {
        let mut batch = sled::Batch::default();
        for ((bucket, key), value) in &writes {
            match value {
                Some(v) => batch.insert(encode(bucket, key), v.as_slice()),
                None => batch.remove(encode(bucket, key)),
            }
        }
        let applied = self.tree.apply_batch(batch).map_err(backend);
        let flusher = self.flusher.clone();
        Box::pin(async move {
            applied?;
            flusher.durable().await
        })
    }
}

/// Group commit: many committers wait for one flush. A committer takes a ticket after
/// its write is applied; the flusher reads the newest ticket before it flushes, so a
/// finished flush covers every ticket up to the one it read.
struct GroupCommit {
    /// Held here, not by the flush thread, so the database closes (and releases its
    /// directory lock) as soon as the storage and its keyspaces are dropped.
    db: sled::Db,
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
                    return Err(StoreError(format!("flush failed: {why}")));
                }
            }
            if done.changed().await.is_err() {
                return Err(StoreError("the flusher stopped".to_string()));
            }
        }
    }
}
