//! The service's key-value store (`wasi:keyvalue/store`): raw bytes or JSON values,
//! key listings, and pages of a listing.

pub use crate::bindings::wasi::keyvalue::store::{Bucket, Error as StoreError, KeyResponse};
use crate::page::{Page, PageRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

/// Why a store operation failed.
#[derive(Debug)]
pub enum Error {
    /// The store refused or failed (`wasi:keyvalue/store.error`).
    Store(StoreError),
    /// The value stored under `key` is not the JSON the caller asked for.
    Decode {
        key: String,
        source: serde_json::Error,
    },
    /// The value to store under `key` could not be encoded as JSON.
    Encode {
        key: String,
        source: serde_json::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Store(StoreError::NoSuchStore) => f.write_str("no such store"),
            Error::Store(StoreError::AccessDenied) => f.write_str("access denied"),
            Error::Store(StoreError::Other(message)) => f.write_str(message),
            Error::Decode { key, source } => {
                write!(f, "stored value under {key:?} is not valid JSON: {source}")
            }
            Error::Encode { key, source } => {
                write!(
                    f,
                    "value for {key:?} could not be encoded as JSON: {source}"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Store(_) => None,
            Error::Decode { source, .. } | Error::Encode { source, .. } => Some(source),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::Store(e)
    }
}

/// A bucket of the service's keyspace. Every service has its own keyspace: the host
/// decides whose keys a bucket holds, not the guest. Reads see the invocation's own
/// writes; the writes are committed only if the invocation succeeds.
pub struct Store {
    bucket: Bucket,
}

impl Store {
    /// Opens the service's `default` bucket.
    pub fn open() -> Result<Store, Error> {
        Store::open_named("default")
    }

    /// Opens the bucket `name` (lower-case letters, digits, `-`, `.`).
    pub fn open_named(name: &str) -> Result<Store, Error> {
        let bucket = crate::bindings::wasi::keyvalue::store::open(name)?;
        Ok(Store { bucket })
    }

    /// The underlying `wasi:keyvalue` bucket.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The bytes under `key`; `None` when the key does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.bucket.get(key)?)
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        Ok(self.bucket.set(key, value)?)
    }

    /// Deletes `key`; deleting a missing key is not an error.
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        Ok(self.bucket.delete(key)?)
    }

    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        Ok(self.bucket.exists(key)?)
    }

    /// The JSON value under `key`; `None` when the key does not exist.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| Error::Decode {
                        key: key.to_string(),
                        source,
                    })
            }
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn set_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode {
            key: key.to_string(),
            source,
        })?;
        self.set(key, &bytes)
    }

    /// One page of the bucket's keys in byte order: start with `None`, then pass the
    /// returned `cursor` until it is `None`.
    pub fn list_keys(&self, cursor: Option<u64>) -> Result<KeyResponse, Error> {
        Ok(self.bucket.list_keys(cursor)?)
    }

    /// Every key that starts with `prefix`, in byte order, following the store's cursor.
    pub fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.list_keys(cursor)?;
            keys.extend(page.keys.into_iter().filter(|k| k.starts_with(prefix)));
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// One page of the keys under `prefix`, as the rest of each key after the prefix (the
    /// id), in byte order: the ids after `page.after`, at most `page.limit` of them, and
    /// `next` when more follow.
    pub fn page_ids(&self, prefix: &str, page: &PageRequest) -> Result<Page<String>, Error> {
        let ids = self
            .keys_with_prefix(prefix)?
            .into_iter()
            .map(|key| key[prefix.len()..].to_string());
        Ok(page.select(ids))
    }

    /// One page of the JSON values under `prefix` (see [`Store::page_ids`]); `next` is the
    /// id of the last one.
    pub fn page_json<T: DeserializeOwned>(
        &self,
        prefix: &str,
        page: &PageRequest,
    ) -> Result<Page<T>, Error> {
        self.page_ids(prefix, page)?
            .try_filter_map(|id| self.get_json(&format!("{prefix}{id}")))
    }
}
