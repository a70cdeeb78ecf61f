//! One loop per subscription: take the next item (redriven events first, then the log
//! at the cursor), deliver it in a fresh instance through `dispatch`, and on failure
//! retry with exponential backoff until `max_deliver`, then dead-letter it and go on.
//! One item at a time, so a subscriber sees its topic in order.

use super::{DeliveryError, Dispatcher};
use crate::bus::{Bus, Item};
use crate::config::SubscriptionSpec;
use crate::registry::ServiceSlot;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long an idle loop sleeps before it looks again without a wake-up (a safety net;
/// commits wake it at once).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Starts a delivery loop for every subscription of every service.
pub(crate) fn spawn_all(
    bus: &Arc<Bus>,
    services: impl Iterator<Item = Arc<ServiceSlot>>,
    dispatcher: &Dispatcher,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    services
        .flat_map(|slot| spawn_slot(bus, &slot, dispatcher, shutdown))
        .collect()
}

/// Starts a delivery loop for every subscription of `slot` (and the replay loop of its
/// queue, for a `queue` fallback). The loops stop when the
/// host shuts down or the slot is retired (its service removed or reconfigured by an
/// applied manifest; the new slot's loops take over from the stored cursors).
pub(crate) fn spawn_slot(
    bus: &Arc<Bus>,
    slot: &Arc<ServiceSlot>,
    dispatcher: &Dispatcher,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let queue = super::queue::spawn(bus, slot, dispatcher, slot.stop_signal());
    if slot.spec.subscribe.is_empty() && queue.is_none() {
        return Vec::new();
    }
    let (mut host_stop, mut slot_stop, retiring) =
        (shutdown.clone(), slot.stop_signal(), slot.clone());
    let mut loops = vec![tokio::spawn(async move {
        tokio::select! {
            _ = host_stop.wait_for(|stop| *stop) => retiring.retire(),
            _ = slot_stop.wait_for(|stop| *stop) => {}
        }
    })];
    loops.extend(queue);
    for sub in slot.spec.subscribe.clone() {
        loops.push(tokio::spawn(run(
            bus.clone(),
            slot.clone(),
            sub,
            dispatcher.clone(),
            slot.stop_signal(),
        )));
    }
    loops
}

async fn run(
    bus: Arc<Bus>,
    slot: Arc<ServiceSlot>,
    sub: SubscriptionSpec,
    dispatcher: Dispatcher,
    mut shutdown: watch::Receiver<bool>,
) {
    let (topic, service) = (sub.topic.as_str(), slot.name());
    let mut appended = bus.watch(topic);
    tracing::debug!(topic, service, "subscription started");
    while !*shutdown.borrow() {
        // Mark the signal seen before looking, so an append after the look wakes us.
        appended.borrow_and_update();
        let item = match bus.next_item(topic, service) {
            Ok(item) => item,
            Err(e) => {
                tracing::error!(topic, service, error = %e, "reading the subscription failed");
                pause(&mut shutdown, IDLE_RECHECK).await;
                continue;
            }
        };
        let Some(item) = item else {
            tokio::select! {
                _ = appended.changed() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(IDLE_RECHECK) => {}
            }
            continue;
        };
        deliver_one(&bus, &slot, &sub, &dispatcher, &mut shutdown, item).await;
    }
    tracing::debug!(topic, service, "subscription stopped");
}

async fn deliver_one(
    bus: &Bus,
    slot: &ServiceSlot,
    sub: &SubscriptionSpec,
    dispatcher: &Dispatcher,
    shutdown: &mut watch::Receiver<bool>,
    item: Item,
) {
    let (topic, service) = (sub.topic.as_str(), slot.name());
    let failed_before = match bus.attempts(topic, service, &item.id) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(topic, service, error = %e, "reading delivery attempts failed");
            pause(shutdown, IDLE_RECHECK).await;
            return;
        }
    };
    let attempt = failed_before + 1;
    let reason = match dispatcher.deliver(slot, &item, attempt).await {
        Ok(()) => {
            bus.metrics.delivered(topic, service);
            return;
        }
        // The item was acknowledged elsewhere or the cursor moved (replay): look again.
        Err(DeliveryError::Conflict(why)) => {
            tracing::debug!(topic, service, why, "delivery superseded");
            return;
        }
        // Not the event's fault: the same attempt again, later (a stopped store keeps
        // every cursor where it was).
        Err(DeliveryError::Host(why)) => {
            tracing::warn!(topic, service, event = %item.event.id, why, "the host could not deliver; will retry");
            pause(shutdown, IDLE_RECHECK).await;
            return;
        }
        Err(DeliveryError::Failed(reason)) => reason,
    };
    if attempt >= sub.max_deliver {
        tracing::warn!(topic, service, event = %item.event.id, attempt, reason, "dead-lettering event");
        if let Err(e) = bus
            .dead_letter(&item, topic, service, &reason, attempt)
            .await
        {
            tracing::error!(topic, service, error = %e, "dead-lettering failed");
            pause(shutdown, IDLE_RECHECK).await;
        }
        return;
    }
    tracing::info!(topic, service, event = %item.event.id, attempt, reason, "delivery failed; will retry");
    bus.metrics.retried(topic, service);
    if let Err(e) = bus.record_failure(topic, service, &item.id, attempt) {
        tracing::error!(topic, service, error = %e, "recording a failed delivery failed");
    }
    pause(shutdown, sub.backoff(attempt)).await;
}

/// Sleeps, or returns early on shutdown.
pub(super) async fn pause(shutdown: &mut watch::Receiver<bool>, delay: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}
