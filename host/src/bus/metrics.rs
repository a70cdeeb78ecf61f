//! Bus counters, exported on `/metrics`: published per topic; delivered, retried and
//! dead-lettered per subscription. Lag is computed when read (log length minus cursor).

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;

/// Counters of one subscription.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct SubscriptionCounters {
    pub(crate) delivered: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
}

/// All bus counters since the host started.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    published: Mutex<BTreeMap<String, u64>>,
    subscriptions: Mutex<BTreeMap<(String, String), SubscriptionCounters>>,
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

impl Metrics {
    pub(crate) fn published(&self, topic: &str) {
        *lock(&self.published).entry(topic.to_string()).or_default() += 1;
    }

    fn update(&self, topic: &str, service: &str, f: impl FnOnce(&mut SubscriptionCounters)) {
        f(lock(&self.subscriptions)
            .entry((topic.to_string(), service.to_string()))
            .or_default());
    }

    pub(crate) fn delivered(&self, topic: &str, service: &str) {
        self.update(topic, service, |c| c.delivered += 1);
    }

    pub(crate) fn retried(&self, topic: &str, service: &str) {
        self.update(topic, service, |c| c.retried += 1);
    }

    pub(crate) fn dead_lettered(&self, topic: &str, service: &str) {
        self.update(topic, service, |c| c.dead_lettered += 1);
    }

    /// Events published to `topic` since start.
    pub(crate) fn published_count(&self, topic: &str) -> u64 {
        lock(&self.published).get(topic).copied().unwrap_or(0)
    }

    /// Every topic's published count.
    pub(crate) fn published_all(&self) -> BTreeMap<String, u64> {
        lock(&self.published).clone()
    }

    /// Every subscription's counters, by (topic, service).
    pub(crate) fn subscriptions_all(&self) -> BTreeMap<(String, String), SubscriptionCounters> {
        lock(&self.subscriptions).clone()
    }

    pub(crate) fn subscription(&self, topic: &str, service: &str) -> SubscriptionCounters {
        lock(&self.subscriptions)
            .get(&(topic.to_string(), service.to_string()))
            .copied()
            .unwrap_or_default()
    }
}
