//! Where services' key-value state lives: one trait, so that a second backend (NATS KV
//! in cluster mode) can sit beside the embedded one.

mod embedded;

pub use embedded::SledStorage;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A storage failure: the backend could not read, write or flush.
#[derive(Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StoreError(pub String);

/// The writes of one invocation, by (bucket, key): `Some(value)` sets, `None` deletes.
/// A `BTreeMap` so that they apply in one deterministic order.
pub type WriteSet = BTreeMap<(String, String), Option<Vec<u8>>>;

/// A boxed future, so that the traits stay object-safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A storage backend: hands out one isolated keyspace per service.
pub trait Storage: Send + Sync + 'static {
    /// The keyspace of `service`. Two services never share a keyspace: the host picks it
    /// from the service's identity, never from anything a guest says.
    fn keyspace(&self, service: &str) -> Result<Arc<dyn Keyspace>, StoreError>;
}

/// One service's keys, grouped in buckets.
pub trait Keyspace: Send + Sync {
    fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every key of `bucket`, in byte order.
    fn keys(&self, bucket: &str) -> Result<Vec<String>, StoreError>;

    /// Applies `writes` atomically (all or none) and resolves once they are durable
    /// (they survive a crash of the host).
    fn commit(&self, writes: WriteSet) -> StoreFuture<'static, ()>;
}
