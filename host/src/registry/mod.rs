//! The service registry: which services exist, the stored versions of each, which one
//! is active (and which is a weighted canary), and every change between them.
//!
//! Every change (deploy, activate, canary, promote, rollback, a manifest applied) goes
//! the same way: under the service's lock, compute the new record, load and check the
//! versions that will newly take traffic (the contract gate, then the health gate),
//! persist record and history entry durably, and only then switch the routing. A
//! refused change leaves everything as it was. Requests pin the version they start on
//! ([`ServiceSlot::pin`]), so a switch drops nothing.

pub mod record;
mod router;
mod slot;
mod supervisor;
pub mod watch;

pub use slot::{Health, InFlight, Routing, ServiceSlot, Version, Window};

use crate::capability::RequestContext;
use crate::capability::outgoing::ServiceCaller;
use crate::config::{Manifest, ServiceSpec, SubscriptionSpec, VersionLabel};
use crate::runtime::{ComponentError, Prepared, Runtime};
use crate::store::{Storage, StoreError};
use anyhow::Context as _;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use record::{CanaryRecord, ComponentStore, HistoryEntry, ServiceRecord, VersionMeta};
use router::Router;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Prepared versions kept in memory beyond those routed to, so that swapping back to a
/// recent version is instant.
const LOADED_VERSIONS: usize = 16;

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("service {name:?} does not exist")]
    UnknownService { name: String },
    #[error(
        "service {service:?} has no version {version:?}; `microhost versions {service}` lists them"
    )]
    UnknownVersion { service: String, version: String },
    #[error("{0}")]
    InvalidVersion(String),
    #[error("{0}")]
    Component(#[from] ComponentError),
    #[error(
        "version {label:?} of service {service:?} exists with different content \
         (sha256 {existing_sha256}); deploy under a new version label"
    )]
    VersionConflict {
        service: String,
        label: String,
        existing_sha256: String,
    },
    /// The version fails its health check or smoke request.
    #[error("version {version:?} of service {service:?} is not healthy: {reason}")]
    Unhealthy {
        service: String,
        version: String,
        reason: String,
    },
    /// The change does not apply to the current state (nothing to promote or roll back).
    #[error("{0}")]
    Refused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

/// An automatic rollback: the canary that was judged, and why.
#[derive(Debug, Clone)]
pub struct AutoRollback {
    pub canary: String,
    pub reason: String,
}

/// What a deploy does with the new version once it is stored and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployMode {
    /// Make it the active version.
    Activate,
    /// Send it this percentage of calls (1–100) as a canary.
    Canary(u8),
    /// Only store it (for a later `activate` or `canary`).
    Store,
}

/// What a successful deploy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    pub service: String,
    pub version: String,
    pub sha256: String,
    /// The active version before.
    pub previous: String,
    /// The active version now.
    pub active: String,
    pub canary: Option<CanaryRecord>,
    /// Whether traffic moved (false: the version was already in the requested role, or
    /// was only stored).
    pub switched: bool,
    /// Whether the version was new to the service's store.
    pub stored: bool,
    pub from_cache: bool,
}

/// A service as it is now, for whoever shows it (the admin API).
pub struct ServiceState {
    pub slot: Arc<ServiceSlot>,
    pub record: ServiceRecord,
}

/// The contract gate: a version must export what the manifest routes it to. (The HTTP
/// handler is checked for every component by the runtime.)
fn check_contract(
    service: &str,
    subscriptions: &[SubscriptionSpec],
    prepared: &Prepared,
) -> Result<(), ComponentError> {
    if let Some(sub) = subscriptions.first()
        && !prepared.is_subscriber()
    {
        return Err(ComponentError::WrongWorld(format!(
            "service {service:?} subscribes to topic {:?}, but the component does not export \
             `{}`",
            sub.topic,
            crate::runtime::SUBSCRIBER
        )));
    }
    Ok(())
}

/// The services, the manifest entries they were built from, and the router over their
/// routes. Replaced whole when a manifest is applied.
struct Catalog {
    services: BTreeMap<String, Arc<ServiceSlot>>,
    router: Router,
}

impl Catalog {
    fn new(services: BTreeMap<String, Arc<ServiceSlot>>) -> Catalog {
        let router = Router::new(
            services
                .values()
                .map(|s| (s.spec.route.clone(), s.name().to_string())),
        );
        Catalog { services, router }
    }
}

/// What applying a manifest changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Services whose settings (route, limits, config, subscriptions...) changed.
    pub reconfigured: Vec<String>,
    /// Services whose component changed: `service@version`.
    pub deployed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Services left as they were, and why.
    pub refused: Vec<Refusal>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub service: String,
    pub reason: String,
}

/// Starts the delivery loops of a slot added by an applied manifest.
/// All services, by name.
pub struct Registry {
    runtime: Arc<Runtime>,
    storage: Arc<dyn Storage>,
    auth: Arc<crate::auth::Auth>,
    components: ComponentStore,
    catalog: RwLock<Arc<Catalog>>,
    /// Each service's record; the lock serializes the service's changes.
    records: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ServiceRecord>>>>,
    /// Recently prepared versions by sha256, most recent last.
    loaded: Mutex<VecDeque<Prepared>>,
    /// Serves the service-to-service calls of health checks.
    caller: Arc<dyn ServiceCaller>,
    /// Slots that started serving at runtime (added or reconfigured by `apply`), for
    /// whoever runs their delivery loops.
    started: tokio::sync::mpsc::UnboundedSender<Arc<ServiceSlot>>,
    /// One manifest applied at a time.
    applying: tokio::sync::Mutex<()>,
}

/// What the registry is built from.
pub struct RegistryParts {
    pub runtime: Arc<Runtime>,
    pub storage: Arc<dyn Storage>,
    pub auth: Arc<crate::auth::Auth>,
    /// Holds the component store (`<data_dir>/components`).
    pub data_dir: std::path::PathBuf,
}

impl Registry {
    /// An empty registry whose health checks make their service calls through
    /// `caller`; [`Registry::load`] fills it. The receiver gets every slot that starts
    /// serving at runtime.
    pub fn new(
        parts: RegistryParts,
        caller: Arc<dyn ServiceCaller>,
    ) -> (
        Registry,
        tokio::sync::mpsc::UnboundedReceiver<Arc<ServiceSlot>>,
    ) {
        let (started, receiver) = tokio::sync::mpsc::unbounded_channel();
        let registry = Registry {
            runtime: parts.runtime,
            storage: parts.storage,
            auth: parts.auth,
            components: ComponentStore::new(parts.data_dir.join("components")),
            catalog: RwLock::new(Arc::new(Catalog::new(BTreeMap::new()))),
            records: Mutex::new(HashMap::new()),
            loaded: Mutex::new(VecDeque::new()),
            caller,
            started,
            applying: tokio::sync::Mutex::new(()),
        };
        (registry, receiver)
    }

    /// Builds every service of the manifest. A service the registry has a record of
    /// comes back as it was (active version, canary, history) unless the manifest now
    /// names a different component for it, which then becomes active.
    pub async fn load(&self, manifest: &Manifest) -> anyhow::Result<()> {
        let mut services = BTreeMap::new();
        for spec in &manifest.services {
            let slot = self
                .restore(manifest, spec, false)
                .await
                .with_context(|| format!("service {:?}", spec.name))?;
            services.insert(spec.name.to_string(), Arc::new(slot));
        }
        self.set_catalog(Catalog::new(services));
        Ok(())
    }

    fn set_catalog(&self, catalog: Catalog) {
        *self.catalog.write() = Arc::new(catalog);
    }

    /// Makes the running services what `manifest` says, without a restart: adds new
    /// services, removes those no longer listed (their records and history are kept for
    /// a later return), rebuilds those whose settings changed, and deploys a component
    /// that changed (through the health gate; a refused one leaves its service as it
    /// was). Requests in flight finish on what they started on.
    pub async fn apply(&self, manifest: &Manifest) -> ApplyReport {
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
                    Arc::new(
                        current
                            .reconfigured(spec, self.storage.clone(), self.auth.clone())
                            .map_err(|e| RegistryError::InvalidVersion(format!("{e:#}")))?,
                    )
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
        let (record, entry) = manifest_change(
            Some(held.clone()),
            desired,
            &prepared,
            wasm.len() as u64,
            &path,
        );
        let version = record.active.clone();
        self.commit(slot, &mut held, record, entry, true).await?;
        Ok(Some(version))
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    fn records_lock(
        &self,
    ) -> parking_lot::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<ServiceRecord>>>> {
        self.records.lock()
    }

    pub fn get(&self, name: &str) -> Option<Arc<ServiceSlot>> {
        self.catalog().services.get(name).cloned()
    }

    /// The service whose route is the longest prefix of `path`.
    pub fn route(&self, path: &str) -> Option<Arc<ServiceSlot>> {
        let catalog = self.catalog();
        let name = catalog.router.route(path)?;
        catalog.services.get(name).cloned()
    }

    pub fn services(&self) -> Vec<Arc<ServiceSlot>> {
        self.catalog().services.values().cloned().collect()
    }

    fn slot(&self, service: &str) -> Result<Arc<ServiceSlot>, RegistryError> {
        self.get(service)
            .ok_or_else(|| RegistryError::UnknownService {
                name: service.to_string(),
            })
    }

    fn record_of(
        &self,
        service: &str,
    ) -> Result<Arc<tokio::sync::Mutex<ServiceRecord>>, RegistryError> {
        self.records_lock()
            .get(service)
            .cloned()
            .ok_or_else(|| RegistryError::UnknownService {
                name: service.to_string(),
            })
    }

    /// The service's slot as its record says (see [`Registry::load`]). With `gate` (a
    /// service added at runtime) the versions it routes to pass their health checks
    /// before anything is saved.
    async fn restore(
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
        let stored = record::load(&*self.storage, &spec.name)?;
        let (record, entry) = match stored {
            Some(record) if record.manifest == desired => (record, None),
            stored => {
                self.store_component(&prepared.sha256, wasm).await?;
                let (record, entry) = manifest_change(stored, desired, &prepared, size, &path);
                (record, Some(entry))
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
        )?;
        if gate {
            for version in routing.versions() {
                self.check(&slot, &version.label, &version.prepared)
                    .await
                    .map_err(|reason| RegistryError::Unhealthy {
                        service: spec.name.to_string(),
                        version: version.label.clone(),
                        reason,
                    })?;
            }
        }
        if let Some(entry) = entry {
            record::save(&*self.storage, &spec.name, Some(&record), entry).await?;
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

    /// Validates and compiles `wasm` (or loads it from the precompiled cache) on a
    /// blocking thread, and keeps it among the loaded versions.
    async fn prepare(&self, wasm: Bytes) -> Result<Prepared, RegistryError> {
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

    async fn store_component(&self, sha256: &str, wasm: Bytes) -> Result<(), RegistryError> {
        let components = self.components.clone();
        let sha256 = sha256.to_string();
        tokio::task::spawn_blocking(move || components.put(&sha256, &wasm))
            .await
            .map_err(|e| RegistryError::Internal(format!("storing the component panicked: {e}")))?
            .map_err(|e| RegistryError::Internal(format!("failed to store the component: {e}")))
    }

    /// The routing `record` asks for. Versions already routed to in `current` are
    /// reused (their in-flight counts go on); the others are loaded and, when `gate` is
    /// given, health-checked first.
    async fn routing_for(
        &self,
        service: &str,
        subscriptions: &[SubscriptionSpec],
        record: &ServiceRecord,
        current: Option<&Routing>,
        gate: Option<&ServiceSlot>,
    ) -> Result<Routing, RegistryError> {
        let version =
            |label: String| self.version_for(service, subscriptions, record, current, gate, label);
        let active = version(record.active.clone()).await?;
        let canary = match &record.canary {
            Some(c) => Some((version(c.version.clone()).await?, c.weight)),
            None => None,
        };
        Ok(Routing { active, canary })
    }

    /// One version of `record`: reused from `current`, or loaded (and gated).
    async fn version_for(
        &self,
        service: &str,
        subscriptions: &[SubscriptionSpec],
        record: &ServiceRecord,
        current: Option<&Routing>,
        gate: Option<&ServiceSlot>,
        label: String,
    ) -> Result<Arc<Version>, RegistryError> {
        let reused = current.and_then(|r| r.versions().find(|v| v.label == label).cloned());
        if let Some(version) = reused {
            return Ok(version);
        }
        let meta = record
            .versions
            .get(&label)
            .ok_or_else(|| RegistryError::UnknownVersion {
                service: service.to_string(),
                version: label.clone(),
            })?;
        let prepared = self.prepared(&meta.sha256).await?;
        check_contract(service, subscriptions, &prepared)?;
        if let Some(slot) = gate {
            self.check(slot, &label, &prepared)
                .await
                .map_err(|reason| RegistryError::Unhealthy {
                    service: service.to_string(),
                    version: label.clone(),
                    reason,
                })?;
        }
        let deployed_at = SystemTime::UNIX_EPOCH + Duration::from_millis(meta.deployed_at_ms);
        Ok(Arc::new(Version::new(label, prepared, deployed_at)))
    }

    /// The health gate: the version's `health` export, then the smoke request. Neither
    /// commits anything.
    pub(crate) async fn check(
        &self,
        slot: &ServiceSlot,
        label: &str,
        prepared: &Prepared,
    ) -> Result<(), String> {
        let cx = RequestContext {
            caller: Some(self.caller.clone()),
            ..RequestContext::new(label)
        };
        match self.runtime.check_health(prepared, &slot.grants, &cx).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(format!("its health check answered: {why}")),
            Err(e) => return Err(format!("its health check failed: {e}")),
        }
        let Some(path) = &slot.spec.health.smoke else {
            return Ok(());
        };
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(path.as_str())
            .header(http::header::HOST, format!("{}.internal", slot.name()))
            .header("x-microhost-probe", "smoke")
            .body(Bytes::new())
            .map_err(|e| format!("the smoke request GET {path} is invalid: {e}"))?;
        match self
            .runtime
            .handle_http(prepared, &slot.grants, &cx, request)
            .await
        {
            Ok((response, _discarded))
                if crate::outcome::Class::of_status(response.status())
                    == crate::outcome::Class::Success =>
            {
                Ok(())
            }
            Ok((response, _)) => {
                let body = String::from_utf8_lossy(response.body());
                let excerpt: String = body.chars().take(200).collect();
                Err(format!(
                    "the smoke request GET {path} answered {}: {excerpt}",
                    response.status()
                ))
            }
            Err(e) => Err(format!("the smoke request GET {path} failed: {e}")),
        }
    }

    /// Applies a change: computes the routing for `record` (loading and gating new
    /// versions), persists record and history entry, then switches traffic.
    async fn commit(
        &self,
        slot: &ServiceSlot,
        held: &mut ServiceRecord,
        record: ServiceRecord,
        entry: HistoryEntry,
        gate: bool,
    ) -> Result<HistoryEntry, RegistryError> {
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
        let entry = record::save(&*self.storage, slot.name(), Some(&record), entry).await?;
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
        let entry = HistoryEntry::new("refused", version).detail(error.to_string());
        if let Err(e) = record::save(&*self.storage, service, None, entry).await {
            tracing::warn!(service, error = %e, "could not record a refused change");
        }
    }

    /// Stores `wasm` as version `label` of `service` and, by `mode`, activates it or
    /// makes it the canary. Checked first: a component of the service world, the
    /// contract gate, the label's content, then (before it takes traffic) its health
    /// check and smoke request. On any error nothing changes. Without a `label`, the
    /// version is named by its content (the first 12 digits of its sha256).
    pub async fn deploy(
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
        if let DeployMode::Canary(weight) = mode
            && !(1..=100).contains(&weight)
        {
            return Err(RegistryError::InvalidVersion(format!(
                "a canary weight is a percentage from 1 to 100, got {weight}"
            )));
        }
        let size = wasm.len() as u64;
        let prepared = self.prepare(wasm.clone()).await?;
        check_contract(service, &slot.spec.subscribe, &prepared)?;
        let label = label.map_or_else(|| prepared.sha256[..12].to_string(), String::from);

        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        if let Some(meta) = held.versions.get(&label)
            && meta.sha256 != prepared.sha256
        {
            return Err(RegistryError::VersionConflict {
                service: service.to_string(),
                label,
                existing_sha256: meta.sha256.clone(),
            });
        }
        let mut record = held.clone();
        record
            .versions
            .entry(label.clone())
            .or_insert_with(|| meta_of(&prepared, size));
        let mut entry = HistoryEntry::new("deploy", &label).from(&held.active);
        match mode {
            DeployMode::Activate => record.activate(&label),
            DeployMode::Canary(weight) => {
                not_active(&record, service, &label)?;
                record.canary = Some(CanaryRecord {
                    version: label.clone(),
                    weight,
                });
                entry = entry.weight(weight);
            }
            DeployMode::Store => entry = entry.detail("stored, not routed to"),
        }
        let previous = held.active.clone();
        let switched = record.active != held.active || record.canary != held.canary;
        let stored = !held.versions.contains_key(&label);
        if switched || stored {
            self.store_component(&prepared.sha256, wasm).await?;
            // The slot in the catalog now (a manifest may have replaced it meanwhile).
            let slot = self.slot(service)?;
            self.commit(&slot, &mut held, record, entry, true).await?;
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
    pub async fn activate(
        &self,
        service: &str,
        label: &str,
    ) -> Result<HistoryEntry, RegistryError> {
        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let slot = self.slot(service)?;
        let mut record = held.clone();
        known(&record, service, label)?;
        if record.active == label {
            return Err(RegistryError::Refused(format!(
                "version {label:?} is already the active version of {service:?}"
            )));
        }
        record.activate(label);
        let entry = HistoryEntry::new("activate", label).from(&held.active);
        self.commit(&slot, &mut held, record, entry, true).await
    }

    /// Sends `weight` percent of calls to a stored version; 0 ends the canary.
    pub async fn set_canary(
        &self,
        service: &str,
        label: &str,
        weight: u8,
    ) -> Result<HistoryEntry, RegistryError> {
        if weight > 100 {
            return Err(RegistryError::InvalidVersion(format!(
                "a canary weight is a percentage from 0 to 100, got {weight}"
            )));
        }
        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let slot = self.slot(service)?;
        let mut record = held.clone();
        known(&record, service, label)?;
        not_active(&record, service, label)?;
        if weight == 0 && record.canary.as_ref().is_none_or(|c| c.version != label) {
            return Err(RegistryError::Refused(format!(
                "version {label:?} is not the canary of {service:?}; weight 0 ends a canary"
            )));
        }
        record.canary = (weight > 0).then(|| CanaryRecord {
            version: label.to_string(),
            weight,
        });
        let entry = HistoryEntry::new("canary", label)
            .from(&held.active)
            .weight(weight);
        self.commit(&slot, &mut held, record, entry, true).await
    }

    /// Makes the canary the active version.
    pub async fn promote(&self, service: &str) -> Result<HistoryEntry, RegistryError> {
        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let slot = self.slot(service)?;
        let mut record = held.clone();
        let Some(canary) = record.canary.clone() else {
            return Err(RegistryError::Refused(format!(
                "service {service:?} has no canary to promote"
            )));
        };
        record.activate(&canary.version);
        let entry = HistoryEntry::new("promote", &canary.version).from(&held.active);
        self.commit(&slot, &mut held, record, entry, true).await
    }

    /// Undoes the last change: ends the canary if there is one, otherwise makes the
    /// previously active version active again. Not gated, so that it cannot be blocked.
    /// `reason` marks an automatic rollback.
    pub async fn rollback(
        &self,
        service: &str,
        auto: Option<AutoRollback>,
    ) -> Result<HistoryEntry, RegistryError> {
        let lock = self.record_of(service)?;
        let mut held = lock.lock().await;
        let slot = self.slot(service)?;
        let mut record = held.clone();
        if let Some(judged) = &auto
            && record
                .canary
                .as_ref()
                .is_none_or(|c| c.version != judged.canary)
        {
            // Changed since it was judged (promoted, replaced, already rolled back).
            return Err(RegistryError::Refused(format!(
                "canary {:?} of {service:?} is no longer the canary",
                judged.canary
            )));
        }
        let action = if auto.is_some() {
            "auto-rollback"
        } else {
            "rollback"
        };
        let entry = if let Some(canary) = record.canary.take() {
            HistoryEntry::new(action, &record.active)
                .detail(format!("canary {:?} removed", canary.version))
                .weight(0)
        } else if let Some(previous) = record.previous.pop() {
            record.active = previous.clone();
            HistoryEntry::new(action, &previous).from(&held.active)
        } else {
            return Err(RegistryError::Refused(format!(
                "service {service:?} has no canary and no previous version to roll back to"
            )));
        };
        let entry = match auto {
            Some(judged) => {
                let detail = entry.detail.clone().unwrap_or_default();
                entry.detail(format!("{detail}: {}", judged.reason))
            }
            None => entry,
        };
        self.commit(&slot, &mut held, record, entry, false).await
    }

    /// The service as it is now: its slot (settings, routing, health, draining
    /// versions) and its record (stored versions, canary, rollback stack).
    pub async fn state(&self, service: &str) -> Result<ServiceState, RegistryError> {
        let slot = self.slot(service)?;
        let record = self.record_of(service)?.lock().await.clone();
        Ok(ServiceState { slot, record })
    }

    /// The service's history after sequence number `after`, oldest first.
    pub fn history(
        &self,
        service: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, RegistryError> {
        self.slot(service)?;
        Ok(record::history(&*self.storage, service, after, limit)?)
    }

    /// Every service as it is now, by name.
    pub async fn states(&self) -> Vec<ServiceState> {
        let mut states = Vec::new();
        for slot in self.services() {
            let record = match self.record_of(slot.name()) {
                Ok(lock) => lock.lock().await.clone(),
                Err(_) => continue,
            };
            states.push(ServiceState { slot, record });
        }
        states
    }

    /// Runs health checks and canary analysis until `stop` turns true.
    pub fn supervise(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(supervisor::run(self.clone(), stop))
    }
}

/// A canary must be another version than the active one.
fn not_active(record: &ServiceRecord, service: &str, label: &str) -> Result<(), RegistryError> {
    if record.active == label {
        return Err(RegistryError::Refused(format!(
            "version {label:?} is the active version of {service:?}; a canary must be \
             another version"
        )));
    }
    Ok(())
}

fn known(record: &ServiceRecord, service: &str, label: &str) -> Result<(), RegistryError> {
    if record.versions.contains_key(label) {
        Ok(())
    } else {
        Err(RegistryError::UnknownVersion {
            service: service.to_string(),
            version: label.to_string(),
        })
    }
}

/// The record after the manifest names new content (or a new label) for a service: the
/// manifest's version becomes active and any canary ends. A label names one content for
/// good, so rebuilt content under the same label gets its hash appended
/// (`0.1.0+1a2b3c4d`).
fn manifest_change(
    stored: Option<ServiceRecord>,
    desired: (String, String),
    prepared: &Prepared,
    size: u64,
    path: &std::path::Path,
) -> (ServiceRecord, HistoryEntry) {
    let mut record = stored.unwrap_or_else(|| ServiceRecord {
        active: String::new(),
        canary: None,
        previous: Vec::new(),
        versions: BTreeMap::new(),
        manifest: desired.clone(),
    });
    let mut label = desired.0.clone();
    if record
        .versions
        .get(&label)
        .is_some_and(|meta| meta.sha256 != prepared.sha256)
    {
        label.truncate(64 - 9);
        label = format!("{label}+{}", &prepared.sha256[..8]);
    }
    record
        .versions
        .entry(label.clone())
        .or_insert_with(|| meta_of(prepared, size));
    let from = record.active.clone();
    if from.is_empty() {
        record.active = label.clone();
    } else {
        record.activate(&label);
    }
    record.canary = None;
    record.manifest = desired;
    let mut entry =
        HistoryEntry::new("manifest", &label).detail(format!("from {}", path.display()));
    if !from.is_empty() && from != label {
        entry = entry.from(&from);
    }
    (record, entry)
}

fn meta_of(prepared: &Prepared, size: u64) -> VersionMeta {
    VersionMeta {
        sha256: prepared.sha256.clone(),
        size,
        deployed_at_ms: record::now_ms(),
        exports: prepared.exports.clone(),
    }
}
