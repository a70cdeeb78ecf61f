//! The catalog: which services exist now (by name and by route prefix), the lock on each
//! one's record, and what each service is now (slot, record, history) for whoever
//! shows it.

use super::record::{self, HistoryEntry, ServiceRecord};
use super::router::Router;
use super::{Registry, RegistryError, ServiceSlot};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A service as it is now, for whoever shows it (the admin API).
pub(crate) struct ServiceState {
    pub(crate) slot: Arc<ServiceSlot>,
    pub(crate) record: ServiceRecord,
}

/// The services, the manifest entries they were built from, and the router over their
/// routes. Replaced whole when a manifest is applied.
pub(super) struct Catalog {
    pub(super) services: BTreeMap<String, Arc<ServiceSlot>>,
    pub(super) router: Router,
}

impl Catalog {
    pub(super) fn new(services: BTreeMap<String, Arc<ServiceSlot>>) -> Catalog {
        let router = Router::new(
            services
                .values()
                .map(|s| (s.spec.route.clone(), s.name().to_string())),
        );
        Catalog { services, router }
    }
}

impl Registry {
    pub(super) fn set_catalog(&self, catalog: Catalog) {
        *self.catalog.write() = Arc::new(catalog);
    }

    pub(super) fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    pub(super) fn records_lock(
        &self,
    ) -> parking_lot::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<ServiceRecord>>>> {
        self.records.lock()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<ServiceSlot>> {
        self.catalog().services.get(name).cloned()
    }

    /// The service whose route is the longest prefix of `path`.
    pub(crate) fn route(&self, path: &str) -> Option<Arc<ServiceSlot>> {
        let catalog = self.catalog();
        let name = catalog.router.route(path)?;
        catalog.services.get(name).cloned()
    }

    pub(crate) fn services(&self) -> Vec<Arc<ServiceSlot>> {
        self.catalog().services.values().cloned().collect()
    }

    pub(super) fn slot(&self, service: &str) -> Result<Arc<ServiceSlot>, RegistryError> {
        self.get(service)
            .ok_or_else(|| RegistryError::UnknownService {
                name: service.to_string(),
            })
    }

    pub(super) fn record_of(
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

    /// The service as it is now: its slot (settings, routing, health, draining
    /// versions) and its record (stored versions, canary, rollback stack).
    pub(crate) async fn state(&self, service: &str) -> Result<ServiceState, RegistryError> {
        let slot = self.slot(service)?;
        let record = self.record_of(service)?.lock().await.clone();
        Ok(ServiceState { slot, record })
    }

    /// The service's history after sequence number `after`, oldest first.
    pub(crate) fn history(
        &self,
        service: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, RegistryError> {
        self.slot(service)?;
        Ok(record::history(&self.storage, service, after, limit)?)
    }

    /// Every service as it is now, by name.
    pub(crate) async fn states(&self) -> Vec<ServiceState> {
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
}
