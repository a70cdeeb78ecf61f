//! Versions made ready to serve: components compiled (or loaded precompiled), the cache
//! of recently prepared ones, the content-addressed component store, and the routing a
//! record asks for, built from them.

use super::gate::check_contract;
use super::record::{self, ServiceRecord, VersionMeta};
use super::{Registry, RegistryError, Routing, ServiceSlot, Version};
use crate::config::SubscriptionSpec;
use crate::runtime::Prepared;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Prepared versions kept in memory beyond those routed to, so that swapping back to a
/// recent version is instant.
const LOADED_VERSIONS: usize = 16;

impl Registry {
    /// Validates and compiles `wasm` (or loads it from the precompiled cache) on a
    /// blocking thread, and keeps it among the loaded versions.
    pub(super) async fn prepare(&self, wasm: Bytes) -> Result<Prepared, RegistryError> {
        let runtime = self.runtime.clone();
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&wasm))
            .await
            .map_err(|e| RegistryError::Internal(format!("compilation panicked: {e}")))??;
        let mut loaded = self.loaded.lock();
        loaded.retain(|p| p.sha256 != prepared.sha256);
        loaded.push_back(prepared.clone());
        while loaded.len() > LOADED_VERSIONS {
            loaded.pop_front();
        }
        Ok(prepared)
    }

    /// The prepared component with this sha256: loaded already, or from the component
    /// store (and the precompiled cache).
    async fn prepared(&self, sha256: &str) -> Result<Prepared, RegistryError> {
        let hit = self
            .loaded
            .lock()
            .iter()
            .find(|p| p.sha256 == sha256)
            .cloned();
        if let Some(prepared) = hit {
            return Ok(prepared);
        }
        let wasm = self.components.get(sha256).map_err(|e| {
            RegistryError::Internal(format!(
                "the component store has no readable artifact {sha256}: {e}"
            ))
        })?;
        self.prepare(Bytes::from(wasm)).await
    }

    pub(super) async fn store_component(
        &self,
        sha256: &str,
        wasm: Bytes,
    ) -> Result<(), RegistryError> {
        let components = self.components.clone();
        let sha256 = sha256.to_string();
        tokio::task::spawn_blocking(move || components.put(&sha256, &wasm))
            .await
            .map_err(|e| RegistryError::Internal(format!("storing the component panicked: {e}")))?
            .map_err(|e| RegistryError::Internal(format!("failed to store the component: {e}")))
    }

    /// The routing `record` asks for. Versions already routed to in `current` are
    /// reused (their in-flight counts go on); the others are loaded, pass the contract
    /// gate and, when `gate` is given, the health gate.
    pub(super) async fn routing_for(
        &self,
        service: &str,
        subscriptions: &[SubscriptionSpec],
        record: &ServiceRecord,
        current: Option<&Routing>,
        gate: Option<&ServiceSlot>,
    ) -> Result<Routing, RegistryError> {
        let version = |label: String| async move {
            let reused = current.and_then(|r| r.versions().find(|v| v.label == label).cloned());
            if let Some(version) = reused {
                return Ok(version);
            }
            let meta =
                record
                    .versions
                    .get(&label)
                    .ok_or_else(|| RegistryError::UnknownVersion {
                        service: service.to_string(),
                        version: label.clone(),
                    })?;
            let prepared = self.prepared(&meta.sha256).await?;
            check_contract(service, subscriptions, &prepared)?;
            if let Some(slot) = gate {
                self.gate(slot, &label, &prepared).await?;
            }
            let deployed_at = SystemTime::UNIX_EPOCH + Duration::from_millis(meta.deployed_at_ms);
            Ok::<_, RegistryError>(Arc::new(Version::new(label, prepared, deployed_at)))
        };
        let active = version(record.active.clone()).await?;
        let canary = match &record.canary {
            Some(c) => Some((version(c.version.clone()).await?, c.weight)),
            None => None,
        };
        Ok(Routing { active, canary })
    }
}

pub(super) fn meta_of(prepared: &Prepared, size: u64) -> VersionMeta {
    VersionMeta {
        sha256: prepared.sha256.clone(),
        size,
        deployed_at_ms: record::now_ms(),
        exports: prepared.exports.clone(),
    }
}
