//! The embedded event bus, on the storage trait: an append-only log per topic, a cursor
//! per (topic, subscriber service), in-order delivery with retries and backoff, a
//! dead-letter topic per subscription, redrive and replay.
//!
//! Events are appended only by [`Bus::commit`], together with the publishing
//! invocation's key-value writes (see [`unit`]); a delivery's effects commit together
//! with the cursor advance, so in embedded mode an event's effects on a subscriber
//! happen exactly once, even across crashes.

pub(crate) mod envelope;
pub(crate) mod metrics;
pub(crate) mod unit;

use crate::store::{Batch, Entry, ReadView as _, Storage, StoreError, keys};
use envelope::Envelope;
use metrics::Metrics;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use unit::{Ack, UnitOfWork};

/// The bus: storage, wake-ups for subscription loops, and counters.
pub(crate) struct Bus {
    storage: Arc<Storage>,
    /// Per topic, a counter bumped on every commit that appends to it.
    signals: Mutex<HashMap<String, watch::Sender<u64>>>,
    pub(crate) metrics: Metrics,
}

/// The next thing a subscription has to deliver.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Names the item for attempt counting: `log:{offset}` or `redrive:{seq}`.
    pub(crate) id: String,
    pub(crate) event: Envelope,
    pub(crate) ack: Ack,
}

/// An event that failed `max_deliver` times, with why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeadLetter {
    /// Position in the dead-letter topic (not stored; from the key).
    #[serde(default)]
    pub(crate) seq: u64,
    pub(crate) event: Envelope,
    pub(crate) reason: String,
    pub(crate) attempts: u32,
    pub(crate) failed_at: String,
}

/// A subscription's position ([`Bus::backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backlog {
    pub(crate) cursor: u64,
    pub(crate) lag: u64,
    pub(crate) dead_letters: u64,
}

/// Delivery attempts of a subscription's current item.
#[derive(Debug, Serialize, Deserialize)]
struct Attempts {
    item: String,
    attempts: u32,
}

/// The dead-letter topic of `service`'s subscription to `topic`: where its dead letters
/// are shown, and a topic like any other that a service may subscribe to.
pub(crate) fn dead_letter_topic(topic: &str, service: &str) -> String {
    crate::config::Topic::dead_letters(topic, service)
}

impl Bus {
    pub(crate) fn new(storage: Arc<Storage>) -> Arc<Bus> {
        Arc::new(Bus {
            storage,
            signals: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
        })
    }

    fn signal(&self, topic: &str) -> watch::Sender<u64> {
        self.signals
            .lock()
            .entry(topic.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// A receiver that changes whenever something is appended to `topic`.
    pub(crate) fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        self.signal(topic).subscribe()
    }

    /// Wakes whoever [`Bus::watch`]es `topic` (a topic, or a name of the host's own).
    pub(crate) fn wake(&self, topic: &str) {
        self.signal(topic).send_modify(|n| *n += 1);
    }

    /// Commits an invocation's effects (and a delivery's acknowledgement) atomically and
    /// durably, then wakes the subscribers of every topic it appended to. Returns the
    /// (topic, offset) of each appended event.
    pub(crate) async fn commit(
        &self,
        unit: &UnitOfWork,
        ack: Option<&Ack>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if unit.is_empty() && ack.is_none() {
            self.settle(unit).await?;
            return Ok(Vec::new());
        }
        let published = unit::apply(&self.storage, unit, ack)?;
        self.storage.durable().await?;
        for (topic, _) in &published {
            self.metrics.published(topic);
            self.wake(topic);
        }
        Ok(published)
    }

    /// Waits until everything the invocation read is durable, so that its answer shows
    /// nothing a crash could take back. (A commit covers its reads: it waits for a
    /// flush after them.)
    pub(crate) async fn settle(&self, unit: &UnitOfWork) -> Result<(), StoreError> {
        self.storage.durable_through(unit.ticket).await
    }

    /// The value of a host key (not a service's), once what it shows is durable.
    pub(crate) async fn read_durable(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.storage.get(key)?;
        self.storage.durable_through(self.storage.ticket()).await?;
        Ok(value)
    }

    /// The first host key under `prefix` and its value.
    pub(crate) fn first(&self, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.storage.scan(prefix, None, 1)?.into_iter().next())
    }

    /// How many host keys are under `prefix`, counting up to `limit`.
    pub(crate) fn count(&self, prefix: &[u8], limit: usize) -> Result<usize, StoreError> {
        Ok(self.storage.scan_keys(prefix, None, limit)?.len())
    }

    /// Deletes the host keys under `prefix` whose value `expired` says so (checked again
    /// inside the transaction that deletes them), a page at a time; returns how many.
    pub(crate) async fn delete_expired(
        &self,
        prefix: &[u8],
        expired: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<usize, StoreError> {
        const PAGE: usize = 1000;
        let mut deleted = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.storage.scan(prefix, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let stale: Vec<&Vec<u8>> = page
                .iter()
                .filter(|(_, value)| expired(value))
                .map(|(key, _)| key)
                .collect();
            if !stale.is_empty() {
                let mut removed = 0;
                self.storage.transact(&mut |view| {
                    let mut batch = Batch::default();
                    removed = 0;
                    for key in &stale {
                        if view.get(key)?.is_some_and(|value| expired(&value)) {
                            batch.delete((*key).clone());
                            removed += 1;
                        }
                    }
                    Ok(batch)
                })?;
                deleted += removed;
            }
            if page.len() < PAGE {
                break;
            }
        }
        if deleted > 0 {
            self.storage.durable().await?;
        }
        Ok(deleted)
    }

    /// Why the store stopped, if a flush failed.
    pub(crate) fn stopped(&self) -> Option<String> {
        self.storage.stopped().map(str::to_string)
    }

    /// Next offset of `topic` (= its length).
    pub(crate) fn length(&self, topic: &str) -> Result<u64, StoreError> {
        unit::next_offset(&*self.storage, topic)
    }

    pub(crate) fn cursor(&self, topic: &str, service: &str) -> Result<u64, StoreError> {
        Ok(self
            .storage
            .get(&keys::cursor(topic, service))?
            .map_or(0, |v| keys::trailing_u64(&v)))
    }

    /// The subscription's next item: redriven events first, then the log at the cursor.
    pub(crate) fn next_item(&self, topic: &str, service: &str) -> Result<Option<Item>, StoreError> {
        let redrive = keys::redrive_prefix(topic, service);
        if let Some((key, value)) = self.storage.scan(&redrive, None, 1)?.into_iter().next() {
            let event = Envelope::decode(&value).map_err(StoreError::Backend)?;
            return Ok(Some(Item {
                id: format!("redrive:{}", keys::trailing_u64(&key)),
                event,
                ack: Ack::Redriven {
                    topic: topic.to_string(),
                    service: service.to_string(),
                    key,
                },
            }));
        }
        let offset = self.cursor(topic, service)?;
        match self.storage.get(&keys::log(topic, offset))? {
            None => Ok(None),
            Some(value) => Ok(Some(Item {
                id: format!("log:{offset}"),
                event: Envelope::decode(&value).map_err(StoreError::Backend)?,
                ack: Ack::Log {
                    topic: topic.to_string(),
                    service: service.to_string(),
                    offset,
                },
            })),
        }
    }

    /// Failed deliveries of `item` so far (survives restarts).
    pub(crate) fn attempts(
        &self,
        topic: &str,
        service: &str,
        item: &str,
    ) -> Result<u32, StoreError> {
        let Some(bytes) = self.storage.get(&keys::attempts(topic, service))? else {
            return Ok(0);
        };
        let recorded: Attempts =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(if recorded.item == item {
            recorded.attempts
        } else {
            0
        })
    }

    /// Records a failed delivery. Not waited to disk: after a crash an event may get a
    /// delivery more than `max_deliver` allows, never fewer.
    pub(crate) fn record_failure(
        &self,
        topic: &str,
        service: &str,
        item: &str,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&Attempts {
            item: item.to_string(),
            attempts,
        })
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        self.storage.transact(&mut |_| {
            let mut batch = Batch::default();
            batch.put(keys::attempts(topic, service), value.clone());
            Ok(batch)
        })
    }

    /// Moves `item` to the subscription's dead-letter topic and acknowledges it, in one
    /// atomic, durable step; delivery goes on with the next item. The dead letter is
    /// kept for the admin API (with why it failed, for redrive) and appended to the
    /// log of the dead-letter topic, so a subscriber to that topic receives the event
    /// (same id, source, key and data; its topic is the dead-letter topic).
    pub(crate) async fn dead_letter(
        &self,
        item: &Item,
        topic: &str,
        service: &str,
        reason: &str,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let letter = DeadLetter {
            seq: 0,
            event: item.event.clone(),
            reason: reason.to_string(),
            attempts,
            failed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        let value = serde_json::to_vec(&letter).map_err(|e| StoreError::Backend(e.to_string()))?;
        let prefix = keys::dead_prefix(topic, service);
        // A name too long to be a topic (a dead-letter topic's own, many levels down)
        // cannot be subscribed to: such a letter is kept for the admin API only.
        let dead_topic = crate::config::Topic::try_from(dead_letter_topic(topic, service)).ok();
        self.storage.transact(&mut |view| {
            let mut batch = Batch::default();
            item.ack.apply(view, &mut batch)?;
            let seq = view.next_seq(&prefix, 0)?;
            batch.put(keys::seq(&prefix, seq), value.clone());
            if let Some(dead_topic) = &dead_topic {
                let mut event = item.event.clone();
                event.topic = dead_topic.to_string();
                event.offset = unit::next_offset(view, dead_topic)?;
                batch.put(keys::log(dead_topic, event.offset), event.encode());
            }
            Ok(batch)
        })?;
        self.storage.durable().await?;
        self.metrics.dead_lettered(topic, service);
        if let Some(dead_topic) = &dead_topic {
            self.metrics.published(dead_topic);
            self.wake(dead_topic);
        }
        Ok(())
    }

    /// Up to `limit` dead letters of a subscription, oldest first, after `after`.
    pub(crate) fn dead_letters(
        &self,
        topic: &str,
        service: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let prefix = keys::dead_prefix(topic, service);
        let after = after.map(|n| keys::seq(&prefix, n));
        self.storage
            .scan(&prefix, after.as_deref(), limit)?
            .into_iter()
            .map(|(key, value)| {
                let mut letter: DeadLetter = serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                letter.seq = keys::trailing_u64(&key);
                Ok(letter)
            })
            .collect()
    }

    pub(crate) fn dead_letter_count(&self, topic: &str, service: &str) -> Result<u64, StoreError> {
        let prefix = keys::dead_prefix(topic, service);
        Ok(self.storage.scan_keys(&prefix, None, usize::MAX)?.len() as u64)
    }

    /// Where `service`'s subscription to `topic` stands: its cursor, how far behind the
    /// topic's end it is, and how many dead letters it holds.
    pub(crate) fn backlog(&self, topic: &str, service: &str) -> Result<Backlog, StoreError> {
        let length = self.length(topic)?;
        let cursor = self.cursor(topic, service)?;
        Ok(Backlog {
            cursor,
            lag: length.saturating_sub(cursor),
            dead_letters: self.dead_letter_count(topic, service)?,
        })
    }

    /// Moves every dead letter of a subscription back into delivery (to this subscriber
    /// only, before the rest of the log), atomically. Returns how many moved.
    pub(crate) async fn redrive(&self, topic: &str, service: &str) -> Result<usize, StoreError> {
        let dead = keys::dead_prefix(topic, service);
        let queue = keys::redrive_prefix(topic, service);
        let mut moved = 0;
        self.storage.transact(&mut |view| {
            let mut batch = Batch::default();
            let letters = self.storage.scan(&dead, None, usize::MAX)?;
            moved = letters.len();
            for (seq, (key, value)) in (view.next_seq(&queue, 0)?..).zip(letters) {
                let letter: DeadLetter = serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                batch.put(keys::seq(&queue, seq), letter.event.encode());
                batch.delete(key);
            }
            Ok(batch)
        })?;
        self.storage.durable().await?;
        self.wake(topic);
        Ok(moved)
    }

    /// Moves a subscription's cursor to `offset`: it receives every event from there
    /// again (or skips ahead). A delivery running meanwhile does not commit.
    pub(crate) async fn replay(
        &self,
        topic: &str,
        service: &str,
        offset: u64,
    ) -> Result<(), StoreError> {
        let length = self.length(topic)?;
        if offset > length {
            return Err(StoreError::Conflict(format!(
                "offset {offset} is past the end of topic {topic:?} (length {length})"
            )));
        }
        self.storage.transact(&mut |_| {
            let mut batch = Batch::default();
            batch.put(keys::cursor(topic, service), keys::encode_u64(offset));
            batch.delete(keys::attempts(topic, service));
            Ok(batch)
        })?;
        self.storage.durable().await?;
        self.wake(topic);
        Ok(())
    }
}
