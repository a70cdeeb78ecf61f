//! The lifecycle operations on one service (deploy, activate, canary, promote,
//! rollback) and the commit every change goes through: under the service's lock,
//! compute the record, gate the versions it newly routes to, persist, then switch.

use super::gate::check_contract;
use super::prepared::meta_of;
use super::record::{self, CanaryRecord, HistoryEntry, ServiceRecord};
use super::transition::{self, Transition};
use super::{Registry, RegistryError, ServiceSlot};
use crate::config::VersionLabel;
use bytes::Bytes;

/// An automatic rollback: the canary that was judged, and why.
#[derive(Debug, Clone)]
pub(crate) struct AutoRollback {
    pub(crate) canary: String,
    pub(crate) reason: String,
}

/// What a deploy does with the new version once it is stored and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeployMode {
    /// Make it the active version.
    Activate,
    /// Send it this percentage of calls (1–100) as a canary.
    Canary(u8),
    /// Only store it (for a later `activate` or `canary`).
    Store,
}

/// What a successful deploy did.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Deployed {
    pub(crate) service: String,
    pub(crate) version: String,
    pub(crate) sha256: String,
    /// The active version before.
    pub(crate) previous: String,
    /// The active version now.
    pub(crate) active: String,
    pub(crate) canary: Option<CanaryRecord>,
    /// Whether traffic moved (false: the version was already in the requested role, or
    /// was only stored).
    pub(crate) switched: bool,
    /// Whether the version was new to the service's store.
    pub(crate) stored: bool,
    pub(crate) from_cache: bool,
}

impl Registry {
    /// Applies a change: computes the routing for the next record (loading and gating
    /// the versions it newly routes to), persists record and history entry, then
    /// switches traffic.
    pub(super) async fn commit(
        &self,
        slot: &ServiceSlot,
        held: &mut ServiceRecord,
        next: Transition,
        gate: bool,
    ) -> Result<HistoryEntry, RegistryError> {
        let Transition { record, entry } = next;
        let current = slot.routing();
        let routing = self
            .routing_for(
                slot.name(),
                &slot.spec.subscribe,
                &record,
                Some(&current),
                gate.then_some(slot),
            )
            .await?;
        let entry = record::save(&self.storage, slot.name(), Some(&record), entry).await?;
        slot.switch(routing);
        tracing::info!(
            service = %slot.name(),
            action = %entry.action,
            version = %entry.version,
            active = %record.active,
            canary = ?record.canary,
            "registry change"
        );
        *held = record;
        Ok(entry)
    }

    /// Records a refused change in the history (best effort: the refusal is what the
    /// caller needs to see).
    async fn refused(&self, service: &str, version: &str, error: &RegistryError) {
        let entry =
            HistoryEntry::new("refused", version, record::now_ms()).detail(error.to_string());
        if let Err(e) = record::save(&self.storage, service, None, entry).await {
            tracing::warn!(service, error = %e, "could not record a refused change");
        }
    }

    /// Stores `wasm` as version `label` of `service` and, by `mode`, activates it or
    /// makes it the canary. Checked first: a component of the service world, the
    /// contract gate, the label's content, then (before it takes traffic) its health
    /// check and smoke request. On any error nothing changes. Without a `label`, the
    /// version is named by its content (the first 12 digits of its sha256).
    pub(crate) async fn deploy(
        &self,
        service: &str,
        label: Option<VersionLabel>,
        wasm: Bytes,
        mode: DeployMode,
    ) -> Result<Deployed, RegistryError> {
        let slot = self.slot(service)?;
        let result = self.deploy_checked(&slot, label.clone(), wasm, mode).await;
        if let Err(error) = &result
            && !matches!(error, RegistryError::Internal(_))
        {
            self.refused(service, label.as_deref().unwrap_or("-"), error)
                .await;
        }
        result
    }

    async fn deploy_checked(
        &self,
        slot: &ServiceSlot,
        label: Option<VersionLabel>,
        wasm: Bytes,
        mode: DeployMode,
    ) -> Result<Deployed, RegistryError> {
        let service = slot.name();
        if let DeployMode::Canary(weight) = mode {
            // Before anything is compiled, as the transition would refuse it after.
            transition::check_weight(weight, 1)?;
        }
        let size = wasm.len() as u64;
        let prepared = self.prepare(wasm.clone()).await?;
        check_contract(service, &slot.spec.subscribe, &prepared)?;
        let label = label.map_or_else(|| prepared.sha256[..12].to_string(), String::from);

        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let meta = meta_of(&prepared, size);
        let next = transition::deploy(&held, service, &label, meta, mode, record::now_ms())?;
        let previous = held.active.clone();
        let switched = next.record.active != held.active || next.record.canary != held.canary;
        let stored = !held.versions.contains_key(&label);
        if switched || stored {
            self.store_component(&prepared.sha256, wasm).await?;
            // The slot in the catalog now (a manifest may have replaced it meanwhile).
            let slot = self.slot(service)?;
            self.commit(&slot, &mut held, next, true).await?;
        }
        Ok(Deployed {
            service: service.to_string(),
            version: label,
            sha256: prepared.sha256.clone(),
            previous,
            active: held.active.clone(),
            canary: held.canary.clone(),
            switched,
            stored,
            from_cache: prepared.from_cache,
        })
    }

    /// Makes a stored version active (after its health gate).
    pub(crate) async fn activate(
        &self,
        service: &str,
        label: &str,
    ) -> Result<HistoryEntry, RegistryError> {
        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let slot = self.slot(service)?;
        let next = transition::activate(&held, service, label, record::now_ms())?;
        self.commit(&slot, &mut held, next, true).await
    }

    /// Sends `weight` percent of calls to a stored version; 0 ends the canary.
    pub(crate) async fn set_canary(
        &self,
        service: &str,
        label: &str,
        weight: u8,
    ) -> Result<HistoryEntry, RegistryError> {
        // Before anything is looked up, as the transition would refuse it after.
        transition::check_weight(weight, 0)?;
        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let slot = self.slot(service)?;
        let next = transition::set_canary(&held, service, label, weight, record::now_ms())?;
        self.commit(&slot, &mut held, next, true).await
    }

    /// Makes the canary the active version.
    pub(crate) async fn promote(&self, service: &str) -> Result<HistoryEntry, RegistryError> {
        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let slot = self.slot(service)?;
        let next = transition::promote(&held, service, record::now_ms())?;
        self.commit(&slot, &mut held, next, true).await
    }

    /// Undoes the last change: ends the canary if there is one, otherwise makes the
    /// previously active version active again. Not gated, so that it cannot be blocked.
    /// `auto` marks an automatic rollback.
    pub(crate) async fn rollback(
        &self,
        service: &str,
        auto: Option<AutoRollback>,
    ) -> Result<HistoryEntry, RegistryError> {
        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let slot = self.slot(service)?;
        let next = transition::rollback(&held, service, auto.as_ref(), record::now_ms())?;
        self.commit(&slot, &mut held, next, false).await
    }
}
