//! The registry's background work: periodic health checks of the versions taking
//! traffic, the analysis that rolls a failing canary back, and the sweep of idle policy
//! state.

use super::{Registry, ServiceSlot};
use crate::registry::record::{self, HistoryEntry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often canaries are analysed and due health checks are run.
const TICK: Duration = Duration::from_millis(100);

/// How often idle policy state (rate-limit buckets) is swept.
const SWEEP: Duration = Duration::from_secs(1);

pub(super) async fn run(registry: Arc<Registry>, mut stop: watch::Receiver<bool>) {
    let mut last_check: HashMap<String, Instant> = HashMap::new();
    let mut last_sweep = Instant::now();
    while !*stop.borrow() {
        let sweep = last_sweep.elapsed() >= SWEEP;
        if sweep {
            last_sweep = Instant::now();
        }
        for slot in registry.services() {
            if sweep {
                slot.policy.sweep();
            }
            analyse_canary(&registry, &slot).await;
            let interval = slot.spec.health.interval_ms;
            if interval == 0 {
                continue;
            }
            let due = last_check
                .get(slot.name())
                .is_none_or(|at| at.elapsed() >= Duration::from_millis(interval));
            if due {
                last_check.insert(slot.name().to_string(), Instant::now());
                check_health(&registry, &slot).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Rolls the canary back when, in the current window, it has served enough calls and
/// fails more often than the stable version by more than the margin. Starts a new
/// window for both when the current one is over.
async fn analyse_canary(registry: &Registry, slot: &ServiceSlot) {
    let routing = slot.routing();
    let Some((canary, _)) = &routing.canary else {
        return;
    };
    let spec = slot.spec.canary;
    let (c, s) = (canary.window(), routing.active.window());
    if c.total() >= spec.min_requests
        && c.failure_pct() > s.failure_pct() + f64::from(spec.error_margin_pct)
    {
        let reason = format!(
            "{} of {} calls to {} failed ({:.0} %) against {:.0} % of {} calls to {} over {} ms \
             (margin {} points)",
            c.failed,
            c.total(),
            canary.label,
            c.failure_pct(),
            s.failure_pct(),
            s.total(),
            routing.active.label,
            c.since.elapsed().as_millis(),
            spec.error_margin_pct
        );
        rollback(registry, slot, &canary.label, reason).await;
    } else if c.since.elapsed() >= Duration::from_millis(spec.window_ms) {
        canary.reset_window();
        routing.active.reset_window();
    }
}

async fn rollback(registry: &Registry, slot: &ServiceSlot, canary: &str, reason: String) {
    tracing::warn!(service = %slot.name(), canary, %reason, "rolling the canary back");
    let judged = super::AutoRollback {
        canary: canary.to_string(),
        reason,
    };
    if let Err(e) = registry.rollback(slot.name(), Some(judged)).await {
        tracing::error!(service = %slot.name(), error = %e, "automatic rollback failed");
    }
}

/// Checks the active version (and the canary, which is rolled back when it fails) and
/// takes the service out of routing, or puts it back, when its health changes.
async fn check_health(registry: &Registry, slot: &ServiceSlot) {
    let routing = slot.routing();
    if let Some((canary, _)) = &routing.canary
        && let Err(reason) = registry.check(slot, &canary.label, &canary.prepared).await
    {
        rollback(
            registry,
            slot,
            &canary.label,
            format!("health check: {reason}"),
        )
        .await;
    }
    let active = &routing.active;
    let result = registry.check(slot, &active.label, &active.prepared).await;
    if !Arc::ptr_eq(active, &slot.active()) {
        // Switched while it was checked: the verdict is about a version that left.
        return;
    }
    if let Some(health) = slot.record_check(result) {
        let (action, detail) = if health.healthy {
            ("healthy", "back in routing".to_string())
        } else {
            (
                "unhealthy",
                format!(
                    "taken out of routing: {}",
                    health.reason.unwrap_or_default()
                ),
            )
        };
        tracing::warn!(service = %slot.name(), version = %active.label, action, %detail, "health changed");
        let entry = HistoryEntry::new(action, &active.label, record::now_ms()).detail(detail);
        if let Err(e) = record::save(&registry.storage, slot.name(), None, entry).await {
            tracing::warn!(service = %slot.name(), error = %e, "could not record a health change");
        }
    }
}
