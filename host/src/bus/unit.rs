//! The unit of work: everything one invocation did (key-value writes, published events,
//! and for an event delivery the acknowledgement) committed in one atomic batch, or not
//! at all.

use super::envelope::Envelope;
use crate::store::{Batch, ReadView, Storage, StoreError, Ticket, keys};
use std::collections::BTreeMap;

/// The effects of one invocation, buffered until it ends.
#[derive(Debug, Default)]
pub(crate) struct UnitOfWork {
    /// The service whose keyspace `kv` writes to.
    pub(crate) service: String,
    /// By (bucket, key): `Some` sets, `None` deletes.
    pub(crate) kv: BTreeMap<(String, String), Option<Vec<u8>>>,
    /// Bytes of buckets, keys and values in `kv`: what the service's write budget counts.
    pub(crate) kv_bytes: usize,
    /// Events to append, in publish order; offsets are assigned at commit.
    pub(crate) events: Vec<Envelope>,
    /// Bytes of the payloads in `events`: what the service's event budget counts.
    pub(crate) event_bytes: usize,
    /// What the invocation read from committed state (storage key → digest of the value
    /// seen, `None` for absent), checked again at commit: optimistic concurrency.
    pub(crate) reads: BTreeMap<Vec<u8>, Option<[u8; 32]>>,
    /// The key ranges `list-keys` pages saw, checked again at commit, so a key added or
    /// removed meanwhile is a conflict too.
    pub(crate) scans: Vec<Scanned>,
    /// Where each `list-keys` cursor handed to the guest resumes: the cursor is an
    /// index here plus one (storage key of the bucket prefix, last key returned).
    pub(crate) cursors: Vec<(Vec<u8>, Vec<u8>)>,
    /// The newest write any read of committed state can have seen: the invocation's
    /// answer waits for it to be durable.
    pub(crate) ticket: Ticket,
    /// Writes of the host's own that commit with the invocation (storage key, value):
    /// the stored answer of an idempotency key. No budget of the guest's counts them.
    pub(crate) host: Vec<(Vec<u8>, Vec<u8>)>,
    /// Values of the host's own appended under a prefix at its next sequence number
    /// (prefix, value): a request a `queue` fallback stores.
    pub(crate) appends: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One page of committed keys a `list-keys` call saw: the keys under `prefix` after
/// `after` up to and including `through` (to the end when `None`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub(crate) prefix: Vec<u8>,
    pub(crate) after: Option<Vec<u8>>,
    pub(crate) through: Option<Vec<u8>>,
    pub(crate) count: usize,
    pub(crate) digest: [u8; 32],
}

impl Scanned {
    /// The committed keys of the range as `storage` has them now, reading at most one
    /// more than were seen (and no values).
    fn still_holds(&self, storage: &Storage) -> Result<bool, StoreError> {
        let mut now = storage.scan_keys(&self.prefix, self.after.as_deref(), self.count + 1)?;
        if let Some(through) = &self.through {
            now.retain(|key| key <= through);
        }
        Ok(now.len() == self.count && digest_keys(now.iter().map(Vec::as_slice)) == self.digest)
    }
}

/// The digest a read is remembered by.
pub(crate) fn digest(value: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(value).into()
}

/// The digest of a list of keys (length-prefixed, so that no two lists collide by
/// concatenation).
pub(crate) fn digest_keys<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for key in keys {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key);
    }
    hasher.finalize().into()
}

impl UnitOfWork {
    pub(crate) fn new(service: &str) -> UnitOfWork {
        UnitOfWork {
            service: service.to_string(),
            ..UnitOfWork::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kv.is_empty()
            && self.events.is_empty()
            && self.host.is_empty()
            && self.appends.is_empty()
    }

    /// Notes a read of committed state: the answer waits for what it saw to be durable.
    pub(crate) fn saw(&mut self, storage: &Storage) {
        self.ticket = self.ticket.max(storage.ticket());
    }
}

/// What a successful event delivery (or replay of a queued request) acknowledges,
/// committed with its effects.
#[derive(Debug, Clone)]
pub(crate) enum Ack {
    /// The event at `offset` of the topic's log: the cursor moves past it.
    Log {
        topic: String,
        service: String,
        offset: u64,
    },
    /// A redriven event: its entry in the redrive queue is removed.
    Redriven {
        topic: String,
        service: String,
        key: Vec<u8>,
    },
    /// A request a `queue` fallback stored: its queue entry (at `key`) is removed.
    Queued { key: Vec<u8> },
}

impl Ack {
    /// Checks that the item is still the subscription's to acknowledge (a replay or a
    /// concurrent acknowledgement may have moved on), and adds the acknowledgement.
    pub(crate) fn apply(&self, view: &dyn ReadView, batch: &mut Batch) -> Result<(), StoreError> {
        match self {
            Ack::Log {
                topic,
                service,
                offset,
            } => {
                let key = keys::cursor(topic, service);
                let cursor = view.get(&key)?.map_or(0, |v| keys::trailing_u64(&v));
                if cursor != *offset {
                    return Err(StoreError::Conflict(format!(
                        "subscription {service:?} on {topic:?} is at offset {cursor}, not {offset}"
                    )));
                }
                batch.put(key, keys::encode_u64(offset + 1));
                batch.delete(keys::attempts(topic, service));
            }
            Ack::Redriven {
                topic,
                service,
                key,
            } => {
                if view.get(key)?.is_none() {
                    return Err(StoreError::Conflict(format!(
                        "redriven event of {service:?} on {topic:?} was already handled"
                    )));
                }
                batch.delete(key.clone());
                batch.delete(keys::attempts(topic, service));
            }
            Ack::Queued { key } => {
                if view.get(key)?.is_none() {
                    return Err(StoreError::Conflict(
                        "the queued request was already replayed".to_string(),
                    ));
                }
                batch.delete(key.clone());
            }
        }
        Ok(())
    }
}

/// Checks that everything the invocation read is still as it saw it. Run inside the
/// commit transaction, so no other commit can slip in between: writing invocations are
/// serializable.
fn validate(storage: &Storage, view: &dyn ReadView, unit: &UnitOfWork) -> Result<(), StoreError> {
    for (key, seen) in &unit.reads {
        let now = view.get(key)?.map(|v| digest(&v));
        if now != *seen {
            return Err(StoreError::Conflict(format!(
                "key {:?} changed since the invocation read it",
                String::from_utf8_lossy(key)
            )));
        }
    }
    for scanned in &unit.scans {
        if !scanned.still_holds(storage)? {
            return Err(StoreError::Conflict(format!(
                "keys under {:?} changed since the invocation listed them",
                String::from_utf8_lossy(&scanned.prefix)
            )));
        }
    }
    Ok(())
}

/// The next offset of `topic`'s log, as `view` sees it.
pub(crate) fn next_offset(view: &dyn ReadView, topic: &str) -> Result<u64, StoreError> {
    view.next_seq(&keys::log_prefix(topic), 0)
}

/// Applies `unit` (and `ack`) atomically; returns the (topic, offset) of every event it
/// appended. Not yet durable: see [`Storage::durable`].
pub(crate) fn apply(
    storage: &Storage,
    unit: &UnitOfWork,
    ack: Option<&Ack>,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut published = Vec::new();
    storage.transact(&mut |view| {
        published.clear();
        validate(storage, view, unit)?;
        let mut batch = Batch::default();
        if let Some(ack) = ack {
            ack.apply(view, &mut batch)?;
        }
        for ((bucket, key), value) in &unit.kv {
            let k = keys::kv(&unit.service, bucket, key);
            match value {
                Some(v) => batch.put(k, v.clone()),
                None => batch.delete(k),
            }
        }
        for (key, value) in &unit.host {
            batch.put(key.clone(), value.clone());
        }
        let mut appended: BTreeMap<&[u8], u64> = BTreeMap::new();
        for (prefix, value) in &unit.appends {
            let seq = match appended.get(prefix.as_slice()) {
                Some(n) => *n,
                None => view.next_seq(prefix, 0)?,
            };
            appended.insert(prefix, seq + 1);
            batch.put(keys::seq(prefix, seq), value.clone());
        }
        let mut next: BTreeMap<&str, u64> = BTreeMap::new();
        for event in &unit.events {
            let offset = match next.get(event.topic.as_str()) {
                Some(n) => *n,
                None => next_offset(view, &event.topic)?,
            };
            next.insert(&event.topic, offset + 1);
            let mut stored = event.clone();
            stored.offset = offset;
            batch.put(keys::log(&event.topic, offset), stored.encode());
            published.push((event.topic.clone(), offset));
        }
        Ok(batch)
    })?;
    Ok(published)
}
