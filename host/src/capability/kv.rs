//! `wasi:keyvalue/store` on the service's own keyspace, with the invocation's writes
//! buffered in its unit of work: reads see the invocation's own writes, and the writes
//! reach the store together with its events, only when the invocation succeeds.

use super::InvocationState;
use super::generated::wasi::keyvalue::store;
use crate::bus::unit::{Scanned, UnitOfWork, digest, digest_keys};
use crate::config::Limits;
use crate::store::{ReadView as _, Storage, keys};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceTableError};

/// Longest key a guest may use, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// Largest value a guest may store, in bytes.
pub(crate) const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Most keys one `list-keys` page returns. The cursor is the invocation's own: it names
/// the last key returned, so a page is read from there without the keys before it.
pub(crate) const LIST_PAGE: usize = 1000;

/// The error a guest sees (`wasi:keyvalue/store.error`).
#[expect(
    unreachable_pub,
    reason = "the generated bindings re-export it with `pub use`"
)]
pub enum KvError {
    NoSuchStore,
    Other(String),
}

impl From<ResourceTableError> for KvError {
    fn from(err: ResourceTableError) -> Self {
        KvError::Other(err.to_string())
    }
}

/// An open bucket: just its name; the keyspace is the invocation's.
#[expect(
    unreachable_pub,
    reason = "the generated bindings re-export it with `pub use`"
)]
pub struct BucketHandle {
    name: String,
}

/// Committed state, read through the service's keyspace only (the keyspace is the
/// unit of work's service), and the budget of what one invocation may buffer. Shared by
/// all the service's invocations.
#[derive(Clone)]
pub(crate) struct KvGrant {
    storage: Arc<Storage>,
    /// Distinct keys one invocation may write (`limits.writes`).
    max_writes: usize,
    /// Bytes of buckets, keys and values it may buffer (`limits.write_kib`).
    max_bytes: usize,
}

impl KvGrant {
    pub(crate) fn new(storage: Arc<Storage>, limits: &Limits) -> KvGrant {
        KvGrant {
            storage,
            max_writes: limits.writes as usize,
            max_bytes: limits.write_bytes(),
        }
    }
}

/// Buffers the write of `value` (`None`: a delete) within the grant's budget: over it,
/// the guest gets an error and the host holds nothing more.
fn buffer(
    grant: &KvGrant,
    unit: &mut UnitOfWork,
    bucket: String,
    key: String,
    value: Option<Vec<u8>>,
) -> Result<(), KvError> {
    let size = |bucket: &str, key: &str, value: Option<&Vec<u8>>| {
        bucket.len() + key.len() + value.map_or(0, Vec::len)
    };
    let entry = (bucket, key);
    let replaced = unit
        .kv
        .get(&entry)
        .map(|old| size(&entry.0, &entry.1, old.as_ref()));
    if replaced.is_none() && unit.kv.len() >= grant.max_writes {
        tracing::warn!(service = %unit.service, writes = grant.max_writes, "write budget spent");
        return Err(KvError::Other(format!(
            "one invocation may write at most {} keys (the service's `limits.writes`)",
            grant.max_writes
        )));
    }
    let bytes = unit.kv_bytes - replaced.unwrap_or(0) + size(&entry.0, &entry.1, value.as_ref());
    if bytes > grant.max_bytes {
        tracing::warn!(service = %unit.service, bytes, budget = grant.max_bytes, "write budget spent");
        return Err(KvError::Other(format!(
            "one invocation may buffer at most {} KiB of keys and values (the service's \
             `limits.write_kib`); this write would make it {} KiB",
            grant.max_bytes / 1024,
            bytes.div_ceil(1024)
        )));
    }
    unit.kv_bytes = bytes;
    unit.kv.insert(entry, value);
    Ok(())
}

fn store_error(e: crate::store::StoreError) -> KvError {
    KvError::Other(e.to_string())
}

/// Most distinct reads (keys read, pages listed) one invocation may make: each is
/// remembered until the commit checks it.
pub(crate) const MAX_READS: usize = 100_000;

/// Makes room for one more remembered read, within [`MAX_READS`].
fn remember(unit: &UnitOfWork) -> Result<(), KvError> {
    if unit.reads.len() + unit.scans.len() >= MAX_READS {
        tracing::warn!(service = %unit.service, reads = MAX_READS, "read budget spent");
        return Err(KvError::Other(format!(
            "one invocation may read at most {MAX_READS} distinct keys and key pages"
        )));
    }
    Ok(())
}

/// A read that sees the invocation's own pending writes first. A read of committed
/// state is remembered, to be validated at commit.
pub(crate) fn read(
    reader: &KvGrant,
    unit: &mut UnitOfWork,
    bucket: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, KvError> {
    if let Some(pending) = unit.kv.get(&(bucket.to_string(), key.to_string())) {
        return Ok(pending.clone());
    }
    let storage_key = keys::kv(&unit.service, bucket, key);
    let value = reader.storage.get(&storage_key).map_err(store_error)?;
    unit.saw(&reader.storage);
    if !unit.reads.contains_key(&storage_key) {
        remember(unit)?;
        unit.reads.insert(storage_key, value.as_deref().map(digest));
    }
    Ok(value)
}

/// One `list-keys` page of `bucket`: committed keys (read without their values, one
/// page from where `cursor` left off) merged with the invocation's pending writes.
fn list_page(
    reader: &KvGrant,
    unit: &mut UnitOfWork,
    bucket: &str,
    prefix: &[u8],
    cursor: Option<u64>,
) -> Result<store::KeyResponse, KvError> {
    let after = match cursor {
        None => None,
        Some(n) => {
            let index = usize::try_from(n).ok().and_then(|n| n.checked_sub(1));
            match index.and_then(|i| unit.cursors.get(i)) {
                Some((p, last)) if p.as_slice() == prefix => Some(last.clone()),
                _ => {
                    return Err(KvError::Other(format!(
                        "cursor {n} was not returned by list-keys on bucket {bucket:?} in \
                         this invocation"
                    )));
                }
            }
        }
    };
    let committed = reader
        .storage
        .scan_keys(prefix, after.as_deref(), LIST_PAGE + 1)
        .map_err(store_error)?;
    unit.saw(&reader.storage);
    // Past a full page, committed keys not read yet may sort before pending ones.
    let bound = (committed.len() > LIST_PAGE).then(|| committed[LIST_PAGE].clone());
    let in_range = |key: &[u8]| {
        after.as_deref().is_none_or(|a| key > a) && bound.as_deref().is_none_or(|b| key <= b)
    };
    let mut merged: std::collections::BTreeSet<Vec<u8>> = committed.iter().cloned().collect();
    for ((b, key), value) in &unit.kv {
        if b != bucket {
            continue;
        }
        let full = keys::kv(&unit.service, b, key);
        if !in_range(&full) {
            continue;
        }
        match value {
            Some(_) => merged.insert(full),
            None => merged.remove(&full),
        };
    }
    let more = bound.is_some() || merged.len() > LIST_PAGE;
    let page: Vec<Vec<u8>> = merged.into_iter().take(LIST_PAGE).collect();
    let through = if more {
        page.last().cloned().or_else(|| bound.clone())
    } else {
        None
    };
    let seen: Vec<&[u8]> = committed
        .iter()
        .map(Vec::as_slice)
        .filter(|key| through.as_deref().is_none_or(|t| *key <= t))
        .collect();
    let scanned = Scanned {
        prefix: prefix.to_vec(),
        after,
        through: through.clone(),
        count: seen.len(),
        digest: digest_keys(seen),
    };
    // The same page listed again (a loop from the start, say) is remembered once.
    if !unit.scans.contains(&scanned) {
        remember(unit)?;
        unit.scans.push(scanned);
    }
    let keys = page
        .iter()
        .map(|k| {
            String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| KvError::Other("stored key is not valid UTF-8".to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cursor = match through {
        Some(last) => {
            let resume = (prefix.to_vec(), last);
            let index = match unit.cursors.iter().position(|c| *c == resume) {
                Some(index) => index,
                None => {
                    unit.cursors.push(resume);
                    unit.cursors.len() - 1
                }
            };
            Some(index as u64 + 1)
        }
        None => None,
    };
    Ok(store::KeyResponse { keys, cursor })
}

/// The view the generated bindings are implemented for.
pub(crate) struct KvView<'a> {
    reader: &'a KvGrant,
    unit: &'a mut UnitOfWork,
    table: &'a mut ResourceTable,
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

pub(crate) fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasKv>(linker, |s: &mut InvocationState| KvView {
        reader: &s.granted.kv,
        unit: &mut s.granted.unit,
        table: &mut s.table,
    })
}

/// Bucket names: 1 to 64 of `a-z 0-9 - _ .`.
fn valid_bucket_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(KvError::Other(format!(
            "key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

impl store::Host for KvView<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, KvError> {
        if !valid_bucket_name(&identifier) {
            return Err(KvError::NoSuchStore);
        }
        Ok(self.table.push(BucketHandle { name: identifier })?)
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<store::Error> {
        Ok(match err {
            KvError::NoSuchStore => store::Error::NoSuchStore,
            KvError::Other(msg) => store::Error::Other(msg),
        })
    }
}

impl KvView<'_> {
    fn bucket(&self, bucket: &Resource<BucketHandle>) -> Result<String, KvError> {
        Ok(self.table.get(bucket)?.name.clone())
    }
}

impl store::HostBucket for KvView<'_> {
    fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let bucket = self.bucket(&bucket)?;
        check_key(&key)?;
        read(self.reader, self.unit, &bucket, &key)
    }

    fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        let bucket = self.bucket(&bucket)?;
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::Other(format!(
                "value of {} bytes is over the limit of {MAX_VALUE_BYTES} bytes",
                value.len()
            )));
        }
        buffer(self.reader, self.unit, bucket, key, Some(value))
    }

    fn delete(&mut self, bucket: Resource<BucketHandle>, key: String) -> Result<(), KvError> {
        let bucket = self.bucket(&bucket)?;
        check_key(&key)?;
        buffer(self.reader, self.unit, bucket, key, None)
    }

    fn exists(&mut self, bucket: Resource<BucketHandle>, key: String) -> Result<bool, KvError> {
        let bucket = self.bucket(&bucket)?;
        check_key(&key)?;
        Ok(read(self.reader, self.unit, &bucket, &key)?.is_some())
    }

    fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let bucket = self.bucket(&bucket)?;
        let prefix = keys::kv_prefix(&self.unit.service, &bucket);
        list_page(self.reader, self.unit, &bucket, &prefix, cursor)
    }

    fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::store::{Host as _, HostBucket as _};
    use super::*;
    use crate::store::{Batch, SledStorage};

    #[test]
    fn bucket_names() {
        assert!(valid_bucket_name("default"));
        assert!(valid_bucket_name("orders-2024.v1"));
        assert!(!valid_bucket_name(""));
        assert!(!valid_bucket_name("Upper"));
        assert!(!valid_bucket_name("a\0b"));
        assert!(!valid_bucket_name(&"x".repeat(65)));
    }

    /// A grant on a fresh store where `orders` has `committed` in bucket `default`, and
    /// `billing` has a key of its own.
    fn grant(
        dir: &std::path::Path,
        committed: &[(&str, &str)],
        limits: &Limits,
    ) -> anyhow::Result<KvGrant> {
        let storage = Storage::new(SledStorage::open(dir)?);
        storage.transact(&mut |_| {
            let mut batch = Batch::default();
            for (key, value) in committed {
                batch.put(
                    keys::kv("orders", "default", key),
                    value.as_bytes().to_vec(),
                );
            }
            batch.put(keys::kv("billing", "default", "secret"), b"no".to_vec());
            Ok(batch)
        })?;
        Ok(KvGrant::new(Arc::new(storage), limits))
    }

    /// Runs `body` as one invocation of `orders` on the store behind `grant`, with bucket
    /// `default` open; returns the invocation's unit of work.
    fn invocation(
        grant: &KvGrant,
        body: impl FnOnce(&mut KvView<'_>, &dyn Fn() -> Resource<BucketHandle>) -> anyhow::Result<()>,
    ) -> anyhow::Result<UnitOfWork> {
        let mut unit = UnitOfWork::new("orders");
        let mut table = ResourceTable::new();
        let mut view = KvView {
            reader: grant,
            unit: &mut unit,
            table: &mut table,
        };
        let bucket = view.open("default".into()).map_err(err)?;
        let b = || Resource::<BucketHandle>::new_borrow(bucket.rep());
        body(&mut view, &b)?;
        Ok(unit)
    }

    fn err(e: KvError) -> anyhow::Error {
        match e {
            KvError::NoSuchStore => anyhow::anyhow!("no such store"),
            KvError::Other(why) => anyhow::anyhow!(why),
        }
    }

    #[tokio::test]
    async fn writes_stay_within_the_services_budget() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let limits = Limits {
            writes: 3,
            write_kib: 8,
            ..Limits::default()
        };
        let grant = grant(dir.path(), &[], &limits)?;
        let unit = invocation(&grant, |view, b| {
            let kib = vec![0; 1024];
            for key in ["a", "b", "c"] {
                view.set(b(), key.into(), kib.clone()).map_err(err)?;
            }
            // A fourth key is over the count; rewriting one of the three is not.
            let over = view.set(b(), "d".into(), vec![1]).err().map(err);
            assert!(over.is_some_and(|e| e.to_string().contains("`limits.writes`")));
            view.set(b(), "a".into(), vec![0; 4 * 1024]).map_err(err)?;
            // About 6 KiB now; `b` at 5 KiB instead of 1 would pass 8.
            let over = view.set(b(), "b".into(), vec![0; 5 * 1024]).err().map(err);
            assert!(over.is_some_and(|e| e.to_string().contains("`limits.write_kib`")));
            view.delete(b(), "c".into()).map_err(err)?;
            Ok(())
        })?;
        assert_eq!(unit.kv.len(), 3);
        let entry = "default".len() + 1;
        assert_eq!(
            unit.kv_bytes,
            (entry + 4096) + (entry + 1024) + entry,
            "bucket, key, value"
        );
        Ok(())
    }

    #[tokio::test]
    async fn reads_see_own_writes_and_only_the_services_keyspace() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let grant = grant(dir.path(), &[("a", "1"), ("b", "2")], &Limits::default())?;
        let unit = invocation(&grant, |view, b| {
            assert!(matches!(
                view.open("No Such".into()),
                Err(KvError::NoSuchStore)
            ));
            assert_eq!(view.get(b(), "a".into()).map_err(err)?, Some(b"1".to_vec()));
            assert_eq!(
                view.get(b(), "secret".into()).map_err(err)?,
                None,
                "billing's key"
            );
            view.set(b(), "a".into(), b"10".to_vec()).map_err(err)?;
            view.set(b(), "c".into(), b"3".to_vec()).map_err(err)?;
            view.delete(b(), "b".into()).map_err(err)?;
            assert_eq!(
                view.get(b(), "a".into()).map_err(err)?,
                Some(b"10".to_vec())
            );
            assert!(!view.exists(b(), "b".into()).map_err(err)?);
            let listed = view.list_keys(b(), None).map_err(err)?;
            assert_eq!(listed.keys, ["a", "c"]);
            assert_eq!(listed.cursor, None);
            assert!(view.get(b(), String::new()).is_err(), "an empty key");
            let big = vec![0; MAX_VALUE_BYTES + 1];
            assert!(view.set(b(), "big".into(), big).is_err());
            Ok(())
        })?;
        // Nothing reached the store: the writes wait in the unit for the commit, and
        // the committed reads are remembered for its conflict check.
        assert_eq!(unit.kv.len(), 3);
        assert!(unit.reads.contains_key(&keys::kv("orders", "default", "a")));
        assert_eq!(
            grant.storage.get(&keys::kv("orders", "default", "a"))?,
            Some(b"1".to_vec())
        );
        Ok(())
    }

    #[tokio::test]
    async fn list_keys_pages_from_its_cursor_and_checks_only_the_pages_it_saw() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        // k0000 .. k2498, even numbers only: room for pending keys in between.
        let names: Vec<String> = (0..2500).step_by(2).map(|n| format!("k{n:04}")).collect();
        let committed: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let grant = grant(dir.path(), &committed, &Limits::default())?;
        let unit = invocation(&grant, |view, b| {
            view.set(b(), "k0001".into(), b"new".to_vec())
                .map_err(err)?;
            view.delete(b(), "k0002".into()).map_err(err)?;
            view.set(b(), "k2499".into(), b"new".to_vec())
                .map_err(err)?;
            let mut listed = Vec::new();
            let mut cursor = None;
            let mut pages = 0;
            loop {
                let page = view.list_keys(b(), cursor).map_err(err)?;
                assert!(page.keys.len() <= LIST_PAGE);
                listed.extend(page.keys);
                pages += 1;
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            let mut expected: Vec<String> = names.clone();
            expected.retain(|k| k != "k0002");
            expected.push("k0001".into());
            expected.push("k2499".into());
            expected.sort();
            assert_eq!(listed, expected);
            assert_eq!(pages, 2);
            // Listing from the start again is remembered once; a made-up cursor is an
            // error, not a page.
            view.list_keys(b(), None).map_err(err)?;
            assert!(view.list_keys(b(), Some(99)).is_err());
            Ok(())
        })?;
        assert_eq!(
            unit.scans.len(),
            2,
            "{:?}",
            unit.scans.iter().map(|s| s.count).collect::<Vec<_>>()
        );
        // A key committed meanwhile inside a listed page is a conflict; the check reads
        // the pages' ranges only.
        let clean = crate::bus::unit::apply(&grant.storage, &unit, None);
        assert!(clean.is_ok(), "nothing changed: {clean:?}");
        let unit = invocation(&grant, |view, b| {
            view.list_keys(b(), None).map_err(err)?;
            Ok(())
        })?;
        grant.storage.transact(&mut |_| {
            let mut batch = Batch::default();
            batch.put(keys::kv("orders", "default", "k0003"), b"v".to_vec());
            Ok(batch)
        })?;
        let conflict = crate::bus::unit::apply(&grant.storage, &unit, None);
        assert!(
            matches!(conflict, Err(crate::store::StoreError::Conflict(_))),
            "{conflict:?}"
        );
        Ok(())
    }
}
