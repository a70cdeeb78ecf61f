//! A service as the request path sees it: its settings from the manifest, the versions
//! traffic goes to (active, and an optional weighted canary), and whether it is healthy.
//!
//! A request pins one [`Version`] when it starts ([`ServiceSlot::pin`]) and keeps the
//! `Arc` to its end, so a switch never changes the version under a running request; a
//! replaced version drains and is freed when its last request finishes (each request is
//! bounded by the service's timeout, which bounds the drain).

use crate::auth::Auth;
use crate::capability::ServiceGrants;
use crate::capability::log::ServiceLog;
use crate::config::ServiceSpec;
use crate::outcome::Class;
use crate::policy::Policy;
use crate::runtime::Prepared;
use crate::store::Storage;
use parking_lot::{Mutex, RwLock};
use rand::Rng as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

/// One component version of a service, ready to serve.
pub(crate) struct Version {
    pub(crate) label: String,
    pub(crate) prepared: Prepared,
    /// When this version was first deployed (from the registry's record).
    pub(crate) deployed_at: SystemTime,
    /// Requests running on this version now.
    in_flight: AtomicUsize,
    /// Requests this version has started in this process.
    served: AtomicU64,
    /// Outcomes in the current canary window.
    window: Mutex<Window>,
}

/// Calls that succeeded and failed since `since`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) since: Instant,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            since: Instant::now(),
            ok: 0,
            failed: 0,
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.ok + self.failed
    }

    /// Failed calls in percent of all calls (0 without calls).
    pub(crate) fn failure_pct(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            self.failed as f64 * 100.0 / self.total() as f64
        }
    }
}

impl Version {
    pub(crate) fn new(label: String, prepared: Prepared, deployed_at: SystemTime) -> Version {
        Version {
            label,
            // Warm instances per service and version, whatever else shares the content.
            prepared: prepared.with_own_warm_pool(),
            deployed_at,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            window: Mutex::new(Window::new()),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Counts the outcome of one call in the current window, as the classifier judges
    /// it (an outcome with no verdict is not counted).
    pub(crate) fn record(&self, class: Class) {
        let Some(failed) = class.failed() else {
            return;
        };
        let mut window = self.window.lock();
        if failed {
            window.failed += 1;
        } else {
            window.ok += 1;
        }
    }

    pub(crate) fn window(&self) -> Window {
        *self.window.lock()
    }

    /// Starts a new window.
    pub(crate) fn reset_window(&self) {
        *self.window.lock() = Window::new();
    }
}

/// Counts a request on a version for as long as it lives.
pub(crate) struct InFlight(Arc<Version>);

impl InFlight {
    pub(crate) fn version(&self) -> &Arc<Version> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a service's traffic goes.
#[derive(Clone)]
pub(crate) struct Routing {
    pub(crate) active: Arc<Version>,
    /// A canary version and the percentage of calls it gets.
    pub(crate) canary: Option<(Arc<Version>, u8)>,
}

impl Routing {
    /// The versions taking traffic: the active one, then the canary.
    pub(crate) fn versions(&self) -> impl Iterator<Item = &Arc<Version>> {
        std::iter::once(&self.active).chain(self.canary.as_ref().map(|(c, _)| c))
    }
}

/// The outcome of the latest health checks.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Health {
    pub(crate) healthy: bool,
    /// Failed checks in a row.
    pub(crate) failures: u32,
    /// Why the last check failed.
    pub(crate) reason: Option<String>,
    /// Unix milliseconds of the last check (0: not checked yet).
    pub(crate) checked_at_ms: u64,
}

/// A service and the versions that serve it.
pub(crate) struct ServiceSlot {
    /// The service's manifest entry, as it was when the slot was made.
    pub(crate) spec: ServiceSpec,
    /// What the service's invocations may use, built once from `spec`.
    pub(crate) grants: Arc<ServiceGrants>,
    /// The route's gateway policies and their state (buckets, queue, cache).
    pub(crate) policy: Arc<Policy>,
    /// Read on every request, written by switches; never held across an `.await`.
    /// Shared with the slot that replaces this one when a manifest reconfigures the
    /// service, so a change made through either reaches both.
    routing: Arc<RwLock<Routing>>,
    /// Versions switched away from that may still have requests running.
    draining: Mutex<Vec<Weak<Version>>>,
    health: Mutex<Health>,
    /// `health.healthy`, readable without the lock on every request.
    healthy: AtomicBool,
    /// Turns true when the slot stops serving (replaced, removed, or shutdown).
    retired: tokio::sync::watch::Sender<bool>,
}

impl ServiceSlot {
    /// The slot of `spec`, routing to `routing`.
    pub(crate) fn new(
        spec: &ServiceSpec,
        storage: Arc<Storage>,
        auth: Arc<Auth>,
        routing: Routing,
    ) -> ServiceSlot {
        let log = ServiceLog::new(&spec.name);
        ServiceSlot::with_log(spec, storage, auth, routing, log)
    }

    /// As [`ServiceSlot::new`], its guests' output going to `log`.
    fn with_log(
        spec: &ServiceSpec,
        storage: Arc<Storage>,
        auth: Arc<Auth>,
        routing: Routing,
        log: Arc<ServiceLog>,
    ) -> ServiceSlot {
        ServiceSlot {
            spec: spec.clone(),
            grants: Arc::new(ServiceGrants::new(spec, storage, auth, log)),
            policy: Arc::new(Policy::new(&spec.policy)),
            routing: Arc::new(RwLock::new(routing)),
            draining: Mutex::new(Vec::new()),
            health: Mutex::new(Health {
                healthy: true,
                ..Health::default()
            }),
            healthy: AtomicBool::new(true),
            retired: tokio::sync::watch::Sender::new(false),
        }
    }

    /// A slot for the changed `spec` that shares this one's routing (for a reconfigured
    /// service: the versions, canary and in-flight counts carry over).
    pub(crate) fn reconfigured(
        &self,
        spec: &ServiceSpec,
        storage: Arc<Storage>,
        auth: Arc<Auth>,
    ) -> ServiceSlot {
        // The log carries over too: what the guests wrote before is still to be read.
        let log = self.grants.log.clone();
        let mut slot = ServiceSlot::with_log(spec, storage, auth, self.routing(), log);
        slot.routing = self.routing.clone();
        slot
    }

    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }

    /// Turns true when the slot is retired; its delivery loops stop then.
    pub(crate) fn stop_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.retired.subscribe()
    }

    pub(crate) fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// The version for one call (the canary for its share of calls), pinned until the
    /// returned guard is dropped.
    pub(crate) fn pin(&self) -> InFlight {
        let version = {
            let routing = self.routing.read();
            match &routing.canary {
                Some((canary, weight)) if rand::thread_rng().gen_range(0..100u8) < *weight => {
                    canary.clone()
                }
                _ => routing.active.clone(),
            }
        };
        version.in_flight.fetch_add(1, Ordering::Relaxed);
        version.served.fetch_add(1, Ordering::Relaxed);
        InFlight(version)
    }

    pub(crate) fn routing(&self) -> Routing {
        self.routing.read().clone()
    }

    pub(crate) fn active(&self) -> Arc<Version> {
        self.routing().active
    }

    /// Switches traffic to `routing`. Versions no longer routed to drain: requests that
    /// pinned them finish on them.
    pub(super) fn switch(&self, routing: Routing) {
        let old = {
            let mut current = self.routing.write();
            std::mem::replace(&mut *current, routing.clone())
        };
        let kept = |v: &Arc<Version>| routing.versions().any(|r| Arc::ptr_eq(v, r));
        if !Arc::ptr_eq(&old.active, &routing.active) {
            // Health is the active version's: a new one starts in routing.
            *self.health.lock() = Health {
                healthy: true,
                ..Health::default()
            };
            self.healthy.store(true, Ordering::Relaxed);
        }
        let mut draining = self.draining.lock();
        draining.retain(|v| v.strong_count() > 0);
        for version in old.versions() {
            if !kept(version) && version.in_flight() > 0 {
                draining.push(Arc::downgrade(version));
            }
        }
        for version in routing.versions() {
            version.reset_window();
        }
    }

    /// Versions no longer routed to that still have requests running: (label, in flight).
    pub(crate) fn draining(&self) -> Vec<(String, usize)> {
        let mut draining = self.draining.lock();
        draining.retain(|v| v.upgrade().is_some_and(|v| v.in_flight() > 0));
        draining
            .iter()
            .filter_map(Weak::upgrade)
            .map(|v| (v.label.clone(), v.in_flight()))
            .collect()
    }

    /// Whether the service is in routing (its health checks pass).
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn health(&self) -> Health {
        self.health.lock().clone()
    }

    /// Records a periodic check; returns the new state when it changed.
    pub(super) fn record_check(&self, result: Result<(), String>) -> Option<Health> {
        let mut health = self.health.lock();
        let was = health.healthy;
        health.checked_at_ms = super::record::now_ms();
        match result {
            Ok(()) => {
                health.healthy = true;
                health.failures = 0;
                health.reason = None;
            }
            Err(reason) => {
                health.failures += 1;
                health.reason = Some(reason);
                if health.failures >= self.spec.health.unhealthy_after {
                    health.healthy = false;
                }
            }
        }
        self.healthy.store(health.healthy, Ordering::Relaxed);
        (health.healthy != was).then(|| health.clone())
    }

    /// Whether a request needs a verified token.
    pub(crate) fn requires_token(&self, method: &str, path: &str) -> bool {
        self.spec.protected
            && !self
                .spec
                .public
                .iter()
                .any(|rule| rule.matches(method, path))
    }
}
