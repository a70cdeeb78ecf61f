//! The service registry: which services exist, the stored versions of each, which one
//! is active (and which is a weighted canary), and every change between them.
//!
//! Every change (deploy, activate, canary, promote, rollback, a manifest applied) goes
//! the same way: under the service's lock, compute the new record, load and check the
//! versions that will newly take traffic (the contract gate, then the health gate),
//! persist record and history entry durably, and only then switch the routing. A
//! refused change leaves everything as it was. Requests pin the version they start on
//! ([`ServiceSlot::pin`]), so a switch drops nothing.
//!
//! By job: `catalog` (which services exist, lookup by name and route), `lifecycle`
//! (deploy, activate, canary, promote, rollback, and the commit they share),
//! `transition` (the pure record change each of those computes), `apply`
//! (the manifest at start and applied at runtime), `gate` (contract and health gates),
//! `prepared` (compiled versions, the component store, the routing a record asks for),
//! `record` (what is persisted), `slot` (a service as the request path sees it),
//! `supervisor` (periodic health checks, canary analysis), `watch` (`serve --watch`),
//! `error`.

mod apply;
mod catalog;
mod error;
mod gate;
mod lifecycle;
mod prepared;
pub(crate) mod record;
mod router;
mod slot;
mod supervisor;
mod transition;
pub(crate) mod watch;

pub(crate) use catalog::ServiceState;
pub(crate) use error::RegistryError;
pub(crate) use lifecycle::{AutoRollback, DeployMode};
pub(crate) use slot::{Health, Routing, ServiceSlot, Version};

use crate::capability::outgoing::ServiceCaller;
use crate::config::Manifest;
use crate::runtime::{Prepared, Runtime};
use crate::store::Storage;
use anyhow::Context as _;
use catalog::Catalog;
use parking_lot::{Mutex, RwLock};
use record::{ComponentStore, ServiceRecord};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// All services, by name: their slots, records and stored versions.
pub(crate) struct Registry {
    runtime: Arc<Runtime>,
    storage: Arc<Storage>,
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
pub(crate) struct RegistryParts {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) storage: Arc<Storage>,
    pub(crate) auth: Arc<crate::auth::Auth>,
    /// Holds the component store (`<data_dir>/components`).
    pub(crate) data_dir: std::path::PathBuf,
}

impl Registry {
    /// An empty registry whose health checks make their service calls through
    /// `caller`; [`Registry::load`] fills it. The receiver gets every slot that starts
    /// serving at runtime.
    pub(crate) fn new(
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
    pub(crate) async fn load(&self, manifest: &Manifest) -> anyhow::Result<()> {
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

    /// Runs health checks and canary analysis until `stop` turns true.
    pub(crate) fn supervise(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(supervisor::run(self.clone(), stop))
    }
}
