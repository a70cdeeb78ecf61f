//! The admin API's JSON bodies about services (status, catalog, versions, history,
//! changes), as typed views built from what the registry returns. A view with a
//! constructor is only built from the registry's data, so its fields are private.

use crate::config::{ServiceName, Topic};
use crate::policy::breaker::Status as BreakerStatus;
use crate::registry::record::{HistoryEntry, Role, ServiceRecord};
use crate::registry::{Health, ServiceSlot, ServiceState, Version};
use serde::Serialize;
use std::time::SystemTime;

/// `GET /admin/services/{name}` and each entry of the catalog: the service's state with
/// its callers' circuit breaker.
#[derive(Debug, Serialize)]
pub(super) struct ServiceView {
    #[serde(flatten)]
    pub(crate) status: ServiceStatus,
    pub(crate) breaker: BreakerStatus,
}

/// `GET /admin/services`.
#[derive(Debug, Serialize)]
pub(super) struct CatalogView {
    pub(crate) services: Vec<ServiceView>,
}

/// A service's settings, routing, health and rollback stack.
#[derive(Debug, Serialize)]
pub(super) struct ServiceStatus {
    name: ServiceName,
    route: String,
    publishes: Vec<Topic>,
    subscribes: Vec<Topic>,
    calls: Vec<ServiceName>,
    protected: bool,
    limits: LimitsView,
    active: VersionView,
    /// `null` without a canary.
    canary: Option<CanaryView>,
    /// Versions `rollback` walks back through, the most recent last.
    previous: Vec<String>,
    /// How many versions are stored.
    versions: usize,
    /// Versions switched away from that still have requests running.
    draining: Vec<DrainingView>,
    health: Health,
    /// The route's policies and their state, as the policy module reports them.
    policy: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub(super) struct LimitsView {
    memory_mib: u32,
    timeout_ms: u64,
    max_body_kib: u64,
}

/// A version taking traffic, with its counters in this process.
#[derive(Debug, Serialize)]
pub(super) struct VersionView {
    version: String,
    sha256: String,
    deployed_at_ms: u64,
    in_flight: usize,
    served: u64,
    loaded_from_cache: bool,
    /// Outcomes in the current canary-analysis window.
    window: WindowView,
}

#[derive(Debug, Serialize)]
pub(super) struct WindowView {
    ok: u64,
    failed: u64,
}

/// The canary: a version view and its share of calls in percent.
#[derive(Debug, Serialize)]
pub(super) struct CanaryView {
    #[serde(flatten)]
    version: VersionView,
    weight: u8,
}

#[derive(Debug, Serialize)]
pub(super) struct DrainingView {
    version: String,
    in_flight: usize,
}

/// `GET /admin/services/{name}/versions`.
#[derive(Debug, Serialize)]
pub(super) struct VersionsView {
    service: String,
    versions: Vec<StoredVersionView>,
}

#[derive(Debug, Serialize)]
pub(super) struct StoredVersionView {
    version: String,
    role: Role,
    sha256: String,
    size: u64,
    deployed_at_ms: u64,
    exports: Vec<String>,
}

/// `GET /admin/services/{name}/history`.
#[derive(Debug, Serialize)]
pub(super) struct HistoryView {
    pub(crate) service: String,
    pub(crate) history: Vec<HistoryEntry>,
}

/// The answer to a change: the history entry it wrote and the service's state after
/// (without the breaker).
#[derive(Debug, Serialize)]
pub(super) struct ChangeView {
    pub(crate) change: HistoryEntry,
    pub(crate) status: ServiceStatus,
}

impl ServiceStatus {
    pub(super) fn new(state: &ServiceState) -> ServiceStatus {
        let ServiceState { slot, record } = state;
        let spec = &slot.spec;
        let routing = slot.routing();
        ServiceStatus {
            name: spec.name.clone(),
            route: spec.route.clone(),
            publishes: spec.publishes.clone(),
            subscribes: spec.subscribe.iter().map(|s| s.topic.clone()).collect(),
            calls: spec.calls.clone(),
            protected: spec.protected,
            limits: LimitsView {
                memory_mib: spec.limits.memory_mib,
                timeout_ms: spec.limits.timeout_ms,
                max_body_kib: spec.limits.max_body_kib,
            },
            active: VersionView::new(&routing.active),
            canary: routing.canary.as_ref().map(|(version, weight)| CanaryView {
                version: VersionView::new(version),
                weight: *weight,
            }),
            previous: record.previous.clone(),
            versions: record.versions.len(),
            draining: draining(slot),
            health: slot.health(),
            policy: slot.policy.status(),
        }
    }
}

fn draining(slot: &ServiceSlot) -> Vec<DrainingView> {
    slot.draining()
        .into_iter()
        .map(|(version, in_flight)| DrainingView { version, in_flight })
        .collect()
}

impl VersionView {
    pub(super) fn new(version: &Version) -> VersionView {
        let window = version.window();
        VersionView {
            version: version.label.clone(),
            sha256: version.prepared.sha256.clone(),
            deployed_at_ms: version
                .deployed_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            in_flight: version.in_flight(),
            served: version.served(),
            loaded_from_cache: version.prepared.from_cache,
            window: WindowView {
                ok: window.ok,
                failed: window.failed,
            },
        }
    }
}

impl VersionsView {
    pub(super) fn new(service: &str, record: &ServiceRecord) -> VersionsView {
        VersionsView {
            service: service.to_string(),
            versions: record
                .versions
                .iter()
                .map(|(label, meta)| StoredVersionView {
                    version: label.clone(),
                    role: record.role(label),
                    sha256: meta.sha256.clone(),
                    size: meta.size,
                    deployed_at_ms: meta.deployed_at_ms,
                    exports: meta.exports.clone(),
                })
                .collect(),
        }
    }
}
