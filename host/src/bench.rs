//! The host's storage, bus and token pieces for the native baseline in
//! `host/benches/baseline/` (cargo feature `bench`, off by default): the seed's logic
//! as plain Rust handlers, on the very store, group commit, unit of work, event log,
//! cursors and token code that microhost's services get, so that `just bench` can say
//! what fraction of this design's physical limit microhost reaches. Nothing here
//! decides anything; each method calls the code it names.

use crate::auth::Auth;
use crate::bus::envelope::Envelope;
use crate::bus::unit::UnitOfWork;
use crate::bus::{Bus, Item};
use crate::capability::kv::{self, KvGrant};
use crate::store::{SledStorage, Storage};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// The key-value bucket the seed's services use (`Store::open()` in the guest SDK).
const BUCKET: &str = "default";

/// A store (sled under `dir`, with the host's group commit) and the bus over it.
pub struct State {
    /// The kv capability's grant, with the default limits.
    kv: KvGrant,
    bus: Arc<Bus>,
}

/// One handler's effects, committed together as an invocation's are ([`UnitOfWork`]).
pub struct Unit(UnitOfWork);

/// An event a subscription has to handle next, and what acknowledges it.
pub struct Delivery(Item);

impl State {
    pub fn open(dir: &Path) -> anyhow::Result<State> {
        let storage = Arc::new(Storage::new(SledStorage::open(dir)?));
        let bus = Bus::new(storage.clone());
        let kv = KvGrant::new(storage, &crate::config::Limits::default());
        Ok(State { kv, bus })
    }

    /// An empty unit of work in `service`'s keyspace.
    pub fn unit(&self, service: &str) -> Unit {
        Unit(UnitOfWork::new(service))
    }

    /// Reads `key` of the unit's service with the kv capability's own read: its pending
    /// write first, else committed state, remembered for the commit's validation.
    pub fn read(&self, unit: &mut Unit, key: &str) -> Result<Option<Vec<u8>>, String> {
        kv::read(&self.kv, &mut unit.0, BUCKET, key).map_err(|e| match e {
            kv::KvError::NoSuchStore => "no such store".to_string(),
            kv::KvError::Other(why) => why,
        })
    }

    /// Commits the unit (and a delivery's acknowledgement) atomically and durably, and
    /// wakes the subscribers of what it published; a unit that only read waits until
    /// what it read is durable.
    pub async fn commit(&self, unit: &Unit, delivery: Option<&Delivery>) -> Result<(), String> {
        self.bus
            .commit(&unit.0, delivery.map(|d| &d.0.ack))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The next event of `service`'s subscription to `topic`, if any.
    pub fn next(&self, topic: &str, service: &str) -> Result<Option<Delivery>, String> {
        self.bus
            .next_item(topic, service)
            .map(|item| item.map(Delivery))
            .map_err(|e| e.to_string())
    }

    /// Changes whenever a commit appends to `topic`.
    pub fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        self.bus.watch(topic)
    }
}

impl Unit {
    /// Buffers a write of `key` in the unit's service keyspace.
    pub fn set(&mut self, key: &str, value: Vec<u8>) {
        self.0.kv_bytes += BUCKET.len() + key.len() + value.len();
        self.0
            .kv
            .insert((BUCKET.to_string(), key.to_string()), Some(value));
    }

    /// Buffers an event, as the events capability builds it (CloudEvent envelope with
    /// the service as source, JSON data).
    pub fn publish(&mut self, topic: &str, key: Option<&str>, data: Vec<u8>) {
        self.0.event_bytes += data.len();
        let mut event = Envelope::new(self.0.service.clone(), topic.to_string(), data);
        event.key = key.map(str::to_string);
        event.datacontenttype = Some("application/json".to_string());
        self.0.events.push(event);
    }
}

impl Delivery {
    pub fn topic(&self) -> &str {
        &self.0.event.topic
    }

    pub fn data(&self) -> &[u8] {
        &self.0.event.data
    }

    pub fn id(&self) -> &str {
        &self.0.event.id
    }

    pub fn time(&self) -> &str {
        &self.0.event.time
    }
}

/// The host's token and password code ([`Auth`]) with the seed manifest's settings.
pub struct Tokens(Auth);

impl Tokens {
    /// HS256 with `secret`, the issuer and audience the seed's `[auth]` names, the
    /// default leeway (30 s), argon2id at the default cost (the seed sets no
    /// `[auth.password]`).
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Tokens {
        Tokens(Auth::new(secret, issuer, audience, 30))
    }

    pub fn issue(
        &self,
        subject: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
        ttl_secs: u64,
    ) -> Result<String, String> {
        self.0.issue(subject, claims, ttl_secs)
    }

    /// The subject of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, String> {
        self.0.verify(token).map(|identity| identity.subject)
    }

    pub async fn hash_password(&self, password: String) -> Result<String, String> {
        self.0.hash_password(password).await
    }

    pub async fn verify_password(&self, password: String, hash: String) -> Result<bool, String> {
        self.0.verify_password(password, hash).await
    }
}
