//! The admin API's JSON bodies (services: status, catalog, versions, history, changes,
//! policies; the bus: topics, dead letters, redrive, replay), as typed views built from
//! what the registry and the bus return. A view with a
//! constructor is only built from the registry's data, so its fields are private.

use crate::bus::DeadLetter;
use crate::bus::metrics::SubscriptionCounters;
use crate::config::{FallbackSpec, ServiceName, Topic};
use crate::policy::Policy;
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
    /// The route's policies and their state.
    policy: PolicyView,
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
            // Sorted and without repeats, as they were shown before the views.
            publishes: sorted(&spec.publishes),
            subscribes: spec.subscribe.iter().map(|s| s.topic.clone()).collect(),
            calls: sorted(&spec.calls),
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
            policy: PolicyView::new(&slot.policy),
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

/// A route's policies and their state: what is configured, and the queue and cache now.
#[derive(Debug, Serialize)]
pub(super) struct PolicyView {
    rate_limit: Option<RateLimitView>,
    concurrency: Option<ConcurrencyView>,
    retry: RetryView,
    cache: Option<CacheView>,
    /// `problem`, `cached` or `static`.
    fallback: &'static str,
    cors: bool,
}

#[derive(Debug, Serialize)]
struct RateLimitView {
    per_second: u32,
    burst: u32,
    /// `ip` or `subject`.
    key: String,
}

#[derive(Debug, Serialize)]
struct ConcurrencyView {
    max: u32,
    queue: u32,
    running: u32,
    queued: u32,
}

#[derive(Debug, Serialize)]
struct RetryView {
    attempts: u32,
    budget_pct: u32,
}

#[derive(Debug, Serialize)]
struct CacheView {
    ttl_ms: u64,
    entries: usize,
}

impl PolicyView {
    fn new(policy: &Policy) -> PolicyView {
        let spec = &policy.spec;
        PolicyView {
            rate_limit: policy.rate_limit.as_ref().map(|r| RateLimitView {
                per_second: r.spec.per_second,
                burst: r.spec.burst(),
                key: format!("{:?}", r.spec.key).to_lowercase(),
            }),
            concurrency: policy.concurrency.as_ref().map(|s| ConcurrencyView {
                max: s.spec.max,
                queue: s.spec.queue,
                running: s.running(),
                queued: s.queued(),
            }),
            retry: RetryView {
                attempts: spec.retry.attempts,
                budget_pct: spec.retry.budget_pct,
            },
            cache: policy.cache.as_ref().map(|c| CacheView {
                ttl_ms: c.spec.ttl_ms,
                entries: c.len(),
            }),
            fallback: match &spec.fallback {
                FallbackSpec::Problem => "problem",
                FallbackSpec::Cached => "cached",
                FallbackSpec::Static { .. } => "static",
                FallbackSpec::Service { .. } => "service",
                FallbackSpec::Queue { .. } => "queue",
            },
            cors: spec.cors.is_some(),
        }
    }
}

/// `GET /admin/topics`.
#[derive(Debug, Serialize)]
pub(super) struct TopicsView {
    pub(super) topics: Vec<TopicView>,
}

/// A topic: its log's length, what was published in this process, its subscriptions.
#[derive(Debug, Serialize)]
pub(super) struct TopicView {
    pub(super) topic: String,
    pub(super) length: u64,
    pub(super) published: u64,
    pub(super) subscriptions: Vec<SubscriptionView>,
}

/// One subscriber of a topic: where it is, how far behind, and its counters.
#[derive(Debug, Serialize)]
pub(super) struct SubscriptionView {
    pub(super) service: String,
    pub(super) cursor: u64,
    pub(super) lag: u64,
    pub(super) max_deliver: u32,
    pub(super) dead_letters: u64,
    pub(super) dead_letter_topic: String,
    /// Delivered, retried and dead-lettered in this process.
    #[serde(flatten)]
    pub(super) counters: SubscriptionCounters,
}

/// `GET /admin/subscriptions/{service}/{topic}/dead-letters`.
#[derive(Debug, Serialize)]
pub(super) struct DeadLettersView {
    pub(super) topic: String,
    pub(super) dead_letters: Vec<DeadLetter>,
}

/// `POST .../redrive`: how many dead letters went back.
#[derive(Debug, Serialize)]
pub(super) struct RedriveView {
    pub(super) service: String,
    pub(super) topic: String,
    pub(super) redriven: usize,
}

/// `POST .../replay`: where the subscription starts again.
#[derive(Debug, Serialize)]
pub(super) struct ReplayView {
    pub(super) service: String,
    pub(super) topic: String,
    pub(super) cursor: u64,
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let set: std::collections::BTreeSet<&T> = items.iter().collect();
    set.into_iter().cloned().collect()
}
