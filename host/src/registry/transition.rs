//! The record transitions: for each change to a service (deploy, activate, canary,
//! promote, rollback, a manifest's new component), the pure function from the held
//! [`ServiceRecord`] to the next one and the history entry that says what changed, or
//! the refusal. The async operations only lock, call one of these, gate and commit.

use super::record::{CanaryRecord, HistoryEntry, ServiceRecord, VersionMeta};
use super::{AutoRollback, DeployMode, RegistryError};
use std::collections::BTreeMap;
use std::path::Path;

/// A change to one service's record: the record after it, and its history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Transition {
    pub(crate) record: ServiceRecord,
    pub(crate) entry: HistoryEntry,
}

/// A canary weight is a percentage up to 100; `min` is 1 where 0 would mean nothing
/// (a deploy), 0 where it ends the canary.
pub(super) fn check_weight(weight: u8, min: u8) -> Result<(), RegistryError> {
    if (min..=100).contains(&weight) {
        Ok(())
    } else {
        Err(RegistryError::InvalidVersion(format!(
            "a canary weight is a percentage from {min} to 100, got {weight}"
        )))
    }
}

/// Stores `meta` as version `label` (a label names one content for good) and, by
/// `mode`, makes it active, the canary, or nothing more. Deploying what is already
/// there in the requested role gives the held record back.
pub(super) fn deploy(
    held: &ServiceRecord,
    service: &str,
    label: &str,
    meta: VersionMeta,
    mode: DeployMode,
    now_ms: u64,
) -> Result<Transition, RegistryError> {
    if let Some(existing) = held.versions.get(label)
        && existing.sha256 != meta.sha256
    {
        return Err(RegistryError::VersionConflict {
            service: service.to_string(),
            label: label.to_string(),
            existing_sha256: existing.sha256.clone(),
        });
    }
    let mut record = held.clone();
    record.versions.entry(label.to_string()).or_insert(meta);
    let mut entry = HistoryEntry::new("deploy", label, now_ms).from(&held.active);
    match mode {
        DeployMode::Activate => record.activate(label),
        DeployMode::Canary(weight) => {
            check_weight(weight, 1)?;
            not_active(&record, service, label)?;
            record.canary = Some(CanaryRecord {
                version: label.to_string(),
                weight,
            });
            entry = entry.weight(weight);
        }
        DeployMode::Store => entry = entry.detail("stored, not routed to"),
    }
    Ok(Transition { record, entry })
}

/// Makes the stored version `label` active; it ends a canary of that version.
pub(super) fn activate(
    held: &ServiceRecord,
    service: &str,
    label: &str,
    now_ms: u64,
) -> Result<Transition, RegistryError> {
    known(held, service, label)?;
    if held.active == label {
        return Err(RegistryError::Refused(format!(
            "version {label:?} is already the active version of {service:?}"
        )));
    }
    let mut record = held.clone();
    record.activate(label);
    let entry = HistoryEntry::new("activate", label, now_ms).from(&held.active);
    Ok(Transition { record, entry })
}

/// Sends `weight` percent of calls to the stored version `label`; 0 ends its canary.
pub(super) fn set_canary(
    held: &ServiceRecord,
    service: &str,
    label: &str,
    weight: u8,
    now_ms: u64,
) -> Result<Transition, RegistryError> {
    check_weight(weight, 0)?;
    known(held, service, label)?;
    not_active(held, service, label)?;
    if weight == 0 && held.canary.as_ref().is_none_or(|c| c.version != label) {
        return Err(RegistryError::Refused(format!(
            "version {label:?} is not the canary of {service:?}; weight 0 ends a canary"
        )));
    }
    let mut record = held.clone();
    record.canary = (weight > 0).then(|| CanaryRecord {
        version: label.to_string(),
        weight,
    });
    let entry = HistoryEntry::new("canary", label, now_ms)
        .from(&held.active)
        .weight(weight);
    Ok(Transition { record, entry })
}

/// Makes the canary the active version.
pub(super) fn promote(
    held: &ServiceRecord,
    service: &str,
    now_ms: u64,
) -> Result<Transition, RegistryError> {
    let Some(canary) = &held.canary else {
        return Err(RegistryError::Refused(format!(
            "service {service:?} has no canary to promote"
        )));
    };
    let mut record = held.clone();
    record.activate(&canary.version);
    let entry = HistoryEntry::new("promote", &canary.version, now_ms).from(&held.active);
    Ok(Transition { record, entry })
}

/// Ends the canary if there is one, otherwise makes the previously active version
/// active again. With `auto` (the canary analysis judged a canary), only that canary is
/// rolled back, and the entry says why.
pub(super) fn rollback(
    held: &ServiceRecord,
    service: &str,
    auto: Option<&AutoRollback>,
    now_ms: u64,
) -> Result<Transition, RegistryError> {
    if let Some(judged) = auto
        && held
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
    let mut record = held.clone();
    let entry = if let Some(canary) = record.canary.take() {
        HistoryEntry::new(action, &record.active, now_ms)
            .detail(format!("canary {:?} removed", canary.version))
            .weight(0)
    } else if let Some(previous) = record.previous.pop() {
        record.active = previous.clone();
        HistoryEntry::new(action, &previous, now_ms).from(&held.active)
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
    Ok(Transition { record, entry })
}

/// The record after the manifest names new content (or a new label) for a service
/// (`stored` is its record, if it has one; `desired` the manifest's label and sha256;
/// `meta` the content's): the manifest's version becomes active and any canary ends. A
/// label names one content for good, so rebuilt content under the same label gets its
/// hash appended (`0.1.0+1a2b3c4d`).
pub(super) fn manifest_change(
    stored: Option<&ServiceRecord>,
    desired: (String, String),
    meta: VersionMeta,
    source: &Path,
    now_ms: u64,
) -> Transition {
    let mut record = stored.cloned().unwrap_or_else(|| ServiceRecord {
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
        .is_some_and(|existing| existing.sha256 != meta.sha256)
    {
        label.truncate(64 - 9);
        label = format!("{label}+{}", &meta.sha256[..8]);
    }
    record.versions.entry(label.clone()).or_insert(meta);
    let from = record.active.clone();
    if from.is_empty() {
        record.active = label.clone();
    } else {
        record.activate(&label);
    }
    record.canary = None;
    record.manifest = desired;
    let mut entry =
        HistoryEntry::new("manifest", &label, now_ms).detail(format!("from {}", source.display()));
    if !from.is_empty() && from != label {
        entry = entry.from(&from);
    }
    Transition { record, entry }
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

#[cfg(test)]
mod tests;
