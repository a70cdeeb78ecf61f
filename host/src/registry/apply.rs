//! Reconciliation with the manifest: each service built as its record says when the
//! host starts, and a changed manifest applied at runtime (services added, removed,
//! reconfigured, or given a changed component).

use super::catalog::Catalog;
use super::gate::check_contract;
use super::prepared::meta_of;
use super::record;
use super::transition;
use super::{Registry, RegistryError, ServiceSlot};
use crate::config::{Manifest, ServiceSpec};
use anyhow::Context as _;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What applying a manifest changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct ApplyReport {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    /// Services whose settings (route, limits, config, subscriptions...) changed.
    pub(crate) reconfigured: Vec<String>,
    /// Services whose component changed: `service@version`.
    pub(crate) deployed: Vec<String>,
    pub(crate) unchanged: Vec<String>,
    /// Services left as they were, and why.
    pub(crate) refused: Vec<Refusal>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Refusal {
    pub(crate) service: String,
    pub(crate) reason: String,
}

impl Registry {
    /// Makes the running services what `manifest` says, without a restart: adds new
    /// services, removes those no longer listed (their records and history are kept for
    /// a later return), rebuilds those whose settings changed, and deploys a component
    /// that changed (through the health gate; a refused one leaves its service as it
    /// was). Requests in flight finish on what they started on.
    pub(crate) async fn apply(&self, manifest: &Manifest) -> ApplyReport {
        let _one_at_a_time = self.applying.lock().await;
        let old = self.catalog();
        let mut report = ApplyReport::default();
        let mut services = BTreeMap::new();
        let mut started = Vec::new();
        for spec in &manifest.services {
            let name = spec.name.to_string();
            let Some(current) = old.services.get(&name) else {
                match self.restore(manifest, spec, true).await {
                    Ok(slot) => {
                        let slot = Arc::new(slot);
                        started.push(slot.clone());
                        services.insert(name.clone(), slot);
                        report.added.push(name);
                    }
                    Err(e) => report.refused.push(Refusal {
                        service: name,
                        reason: format!("{e:#}"),
                    }),
                }
                continue;
            };
            let reconfigured = current.spec != *spec;
            let outcome = async {
                let slot = if reconfigured {
                    let routing = current.routing();
                    // The versions serving now must fit the new subscriptions too.
                    for version in routing.versions() {
                        check_contract(&name, &spec.subscribe, &version.prepared)?;
                    }
                    Arc::new(current.reconfigured(spec, self.storage.clone(), self.auth.clone()))
                } else {
                    current.clone()
                };
                let deployed = self.deploy_manifest_version(manifest, spec, &slot).await?;
                Ok::<_, RegistryError>((slot, deployed))
            }
            .await;
            match outcome {
                Ok((slot, deployed)) => {
                    let redeployed = deployed.is_some();
                    if let Some(version) = deployed {
                        report.deployed.push(format!("{name}@{version}"));
                    }
                    if reconfigured {
                        report.reconfigured.push(name.clone());
                        started.push(slot.clone());
                    } else if !redeployed {
                        report.unchanged.push(name.clone());
                    }
                    services.insert(name.clone(), slot);
                }
                Err(e) => {
                    // Left as it was: the old slot and the old entry.
                    report.refused.push(Refusal {
                        service: name.clone(),
                        reason: e.to_string(),
                    });
                    services.insert(name.clone(), current.clone());
                }
            }
        }
        for (name, slot) in &old.services {
            if !services.contains_key(name) {
                // Its record lock stays: an operation may hold it, and the service may
                // come back.
                report.removed.push(name.clone());
            }
            if !services.get(name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                slot.retire();
            }
        }
        self.set_catalog(Catalog::new(services));
        for slot in started {
            // Nobody listening: the host is shutting down.
            let _ = self.started.send(slot);
        }
        tracing::info!(?report, "manifest applied");
        report
    }

    /// Deploys the manifest's component of an existing service if it differs from what
    /// the manifest said when last applied; returns the version it activated.
    async fn deploy_manifest_version(
        &self,
        manifest: &Manifest,
        spec: &ServiceSpec,
        slot: &ServiceSlot,
    ) -> Result<Option<String>, RegistryError> {
        let path = manifest.component_path(spec);
        let wasm = Bytes::from(std::fs::read(&path).map_err(|e| {
            RegistryError::InvalidVersion(format!("failed to read component {path:?}: {e}"))
        })?);
        let prepared = self.prepare(wasm.clone()).await?;
        check_contract(&spec.name, &spec.subscribe, &prepared)?;
        let lock = self.record_of(&spec.name)?;
        let mut held = lock.lock().await;
        let desired = (spec.component.version.to_string(), prepared.sha256.clone());
        if held.manifest == desired {
            return Ok(None);
        }
        self.store_component(&prepared.sha256, wasm.clone()).await?;
        let meta = meta_of(&prepared, wasm.len() as u64);
        let next = transition::manifest_change(Some(&held), desired, meta, &path, record::now_ms());
        let version = next.record.active.clone();
        self.commit(slot, &mut held, next, true).await?;
        Ok(Some(version))
    }

    /// The service's slot as its record says (see [`Registry::load`]). With `gate` (a
    /// service added at runtime) the versions it routes to pass their health checks
    /// before anything is saved.
    pub(super) async fn restore(
        &self,
        manifest: &Manifest,
        spec: &ServiceSpec,
        gate: bool,
    ) -> anyhow::Result<ServiceSlot> {
        let path = manifest.component_path(spec);
        let wasm = Bytes::from(std::fs::read(&path).with_context(|| {
            format!("failed to read component {path:?} (run `just build-components`?)")
        })?);
        let size = wasm.len() as u64;
        let prepared = self
            .prepare(wasm.clone())
            .await
            .with_context(|| format!("component {path:?}"))?;
        check_contract(&spec.name, &spec.subscribe, &prepared)
            .with_context(|| format!("component {path:?}"))?;
        let desired = (spec.component.version.to_string(), prepared.sha256.clone());
        let stored = record::load(&self.storage, &spec.name)?;
        let (record, entry) = match stored {
            Some(record) if record.manifest == desired => (record, None),
            stored => {
                self.store_component(&prepared.sha256, wasm).await?;
                let meta = meta_of(&prepared, size);
                let next = transition::manifest_change(
                    stored.as_ref(),
                    desired,
                    meta,
                    &path,
                    record::now_ms(),
                );
                (next.record, Some(next.entry))
            }
        };
        let routing = self
            .routing_for(&spec.name, &spec.subscribe, &record, None, None)
            .await
            .map_err(anyhow::Error::msg)?;
        let slot = ServiceSlot::new(
            spec,
            self.storage.clone(),
            self.auth.clone(),
            routing.clone(),
        );
        if gate {
            for version in routing.versions() {
                self.gate(&slot, &version.label, &version.prepared).await?;
            }
        }
        if let Some(entry) = entry {
            record::save(&self.storage, &spec.name, Some(&record), entry).await?;
        }
        tracing::info!(
            service = %spec.name,
            active = %routing.active.label,
            canary = ?record.canary,
            sha256 = %&routing.active.prepared.sha256[..12],
            cached = routing.active.prepared.from_cache,
            "service ready"
        );
        let existing = self.records_lock().get(spec.name.as_str()).cloned();
        match existing {
            Some(lock) => *lock.lock().await = record,
            None => {
                self.records_lock().insert(
                    spec.name.to_string(),
                    Arc::new(tokio::sync::Mutex::new(record)),
                );
            }
        }
        Ok(slot)
    }
}
