//! What the registry persists: the component store (content-addressed `.wasm` files)
//! and, in the state database, one record per service (its versions, which one is
//! active, the canary and its weight, the rollback stack) and its deployment history.
//! A change is durable (flushed) before it takes effect, so it survives `kill -9`.

use crate::store::{Batch, ReadView as _, Storage, StoreError, keys};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// How many previously active versions `rollback` can walk back through.
const ROLLBACK_DEPTH: usize = 32;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stored version of a service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct VersionMeta {
    pub(crate) sha256: String,
    pub(crate) size: u64,
    /// Unix milliseconds of the first deploy.
    pub(crate) deployed_at_ms: u64,
    /// The component's exports, as checked against the service world.
    pub(crate) exports: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CanaryRecord {
    pub(crate) version: String,
    /// Percentage of calls, 1 to 100.
    pub(crate) weight: u8,
}

/// The registry's record of one service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ServiceRecord {
    pub(crate) active: String,
    pub(crate) canary: Option<CanaryRecord>,
    /// Versions that were active before, the most recent last.
    pub(crate) previous: Vec<String>,
    pub(crate) versions: BTreeMap<String, VersionMeta>,
    /// The manifest's (version, sha256) when it was last applied: a manifest that names
    /// something else is a new desired state and wins over runtime changes.
    pub(crate) manifest: (String, String),
}

impl ServiceRecord {
    /// Makes `label` active, remembering the one it replaces for rollback.
    pub(crate) fn activate(&mut self, label: &str) {
        if self.active != label {
            let old = std::mem::replace(&mut self.active, label.to_string());
            self.previous.retain(|v| v != label && *v != old);
            self.previous.push(old);
            if self.previous.len() > ROLLBACK_DEPTH {
                self.previous.remove(0);
            }
        }
        if self.canary.as_ref().is_some_and(|c| c.version == label) {
            self.canary = None;
        }
    }

    /// What the stored version `label` does now.
    pub(crate) fn role(&self, label: &str) -> Role {
        if self.active == label {
            Role::Active
        } else if self.canary.as_ref().is_some_and(|c| c.version == label) {
            Role::Canary
        } else if self.previous.iter().any(|v| v == label) {
            Role::Previous
        } else {
            Role::Stored
        }
    }
}

/// What a stored version does: takes the traffic, takes the canary's share, waits on
/// the rollback stack, or is only stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Active,
    Canary,
    Previous,
    Stored,
}

/// One entry of a service's deployment history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct HistoryEntry {
    #[serde(default)]
    pub(crate) seq: u64,
    pub(crate) at_ms: u64,
    /// `deploy`, `activate`, `canary`, `promote`, `rollback`, `auto-rollback`,
    /// `manifest`, `refused`, `unhealthy` or `healthy`.
    pub(crate) action: String,
    pub(crate) version: String,
    /// The active version before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) weight: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

impl HistoryEntry {
    /// An entry made at `at_ms` (Unix milliseconds; the sequence number comes when it is
    /// saved).
    pub(crate) fn new(action: &str, version: &str, at_ms: u64) -> HistoryEntry {
        HistoryEntry {
            seq: 0,
            at_ms,
            action: action.to_string(),
            version: version.to_string(),
            from: None,
            weight: None,
            detail: None,
        }
    }

    pub(crate) fn from(mut self, from: &str) -> HistoryEntry {
        self.from = Some(from.to_string());
        self
    }

    pub(crate) fn weight(mut self, weight: u8) -> HistoryEntry {
        self.weight = Some(weight);
        self
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> HistoryEntry {
        self.detail = Some(detail.into());
        self
    }
}

fn corrupt(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("unreadable {what}: {e}"))
}

pub(crate) fn load(storage: &Storage, service: &str) -> Result<Option<ServiceRecord>, StoreError> {
    storage
        .get(&keys::registry_record(service))?
        .map(|bytes| serde_json::from_slice(&bytes).map_err(|e| corrupt("registry record", e)))
        .transpose()
}

/// Writes `record` (when given) and appends `entry` to the history in one transaction,
/// and waits until both are on disk.
pub(crate) async fn save(
    storage: &Storage,
    service: &str,
    record: Option<&ServiceRecord>,
    mut entry: HistoryEntry,
) -> Result<HistoryEntry, StoreError> {
    let record = record
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    let prefix = keys::history_prefix(service);
    storage.transact(&mut |view| {
        let mut batch = Batch::default();
        entry.seq = view.next_seq(&prefix, 1)?;
        let value = serde_json::to_vec(&entry).map_err(|e| StoreError::Backend(e.to_string()))?;
        batch.put(keys::seq(&prefix, entry.seq), value);
        if let Some(record) = &record {
            batch.put(keys::registry_record(service), record.clone());
        }
        Ok(batch)
    })?;
    storage.durable().await?;
    Ok(entry)
}

/// Up to `limit` history entries after sequence number `after`, oldest first.
pub(crate) fn history(
    storage: &Storage,
    service: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let prefix = keys::history_prefix(service);
    let after = keys::seq(&prefix, after);
    storage
        .scan(&prefix, Some(&after), limit)?
        .into_iter()
        .map(|(_, value)| serde_json::from_slice(&value).map_err(|e| corrupt("history entry", e)))
        .collect()
}

/// Component files by sha256, in `<data-dir>/components`.
#[derive(Debug, Clone)]
pub(crate) struct ComponentStore {
    dir: PathBuf,
}

impl ComponentStore {
    pub(crate) fn new(dir: PathBuf) -> ComponentStore {
        ComponentStore { dir }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }

    /// Stores `wasm` under its sha256 (once), durably: written to a temporary file,
    /// synced, then renamed into place.
    pub(crate) fn put(&self, sha256: &str, wasm: &[u8]) -> std::io::Result<()> {
        let path = self.path(sha256);
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        // A name of its own, so that two stores of the same content never share it.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{sha256}.tmp{}-{n}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(wasm)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    pub(crate) fn get(&self, sha256: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(sha256))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ServiceRecord {
        ServiceRecord {
            active: "v1".into(),
            canary: None,
            previous: Vec::new(),
            versions: BTreeMap::new(),
            manifest: ("v1".into(), "aa".into()),
        }
    }

    #[test]
    fn activation_keeps_a_rollback_stack() {
        let mut r = record();
        r.activate("v2");
        r.activate("v3");
        assert_eq!(r.active, "v3");
        assert_eq!(r.previous, ["v1", "v2"]);
        // Going back to v1 moves it off the stack.
        r.activate("v1");
        assert_eq!(r.previous, ["v2", "v3"]);
        r.canary = Some(CanaryRecord {
            version: "v4".into(),
            weight: 20,
        });
        r.activate("v4");
        assert_eq!(r.canary, None, "promoting the canary ends it");
        r.activate("v4");
        assert_eq!(r.previous, ["v2", "v3", "v1"], "re-activating is a no-op");
    }

    #[test]
    fn roles_of_stored_versions() {
        let mut r = record();
        r.activate("v2");
        r.canary = Some(CanaryRecord {
            version: "v3".into(),
            weight: 10,
        });
        assert_eq!(r.role("v2"), Role::Active);
        assert_eq!(r.role("v3"), Role::Canary);
        assert_eq!(r.role("v1"), Role::Previous);
        assert_eq!(r.role("v0"), Role::Stored);
        assert_eq!(
            serde_json::to_value([Role::Active, Role::Stored]).expect("roles serialize"),
            serde_json::json!(["active", "stored"])
        );
    }
}
