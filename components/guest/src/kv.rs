//! Typed helpers over `wasi:keyvalue/store`: the service's own keyspace, values as JSON.

pub use crate::bindings::wasi::keyvalue::store::{Bucket, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Opens the service's default bucket. Every service has its own keyspace: the host
/// decides whose keys a bucket holds, not the guest.
pub fn open() -> Result<Bucket, String> {
    crate::bindings::wasi::keyvalue::store::open("default").map_err(describe)
}

/// Reads a JSON value; `Ok(None)` when the key does not exist.
pub fn get_json<T: DeserializeOwned>(bucket: &Bucket, key: &str) -> Result<Option<T>, String> {
    match bucket.get(key).map_err(describe)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("stored value under {key:?} is not valid JSON: {e}")),
    }
}

/// Writes a JSON value.
pub fn set_json<T: Serialize>(bucket: &Bucket, key: &str, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    bucket.set(key, &bytes).map_err(describe)
}

/// Every key that starts with `prefix`, in byte order, following the store's cursor.
pub fn keys_with_prefix(bucket: &Bucket, prefix: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor).map_err(describe)?;
        keys.extend(page.keys.into_iter().filter(|k| k.starts_with(prefix)));
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(keys),
        }
    }
}

/// A readable message for a store error.
pub fn describe(e: Error) -> String {
    match e {
        Error::NoSuchStore => "no such store".to_string(),
        Error::AccessDenied => "access denied".to_string(),
        Error::Other(msg) => msg,
    }
}
