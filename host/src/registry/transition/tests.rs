//! The record transitions, each from a small held record: what it changes, the entry
//! it writes, and every refusal.

use super::*;

const NOW: u64 = 1_700_000_000_000;

fn meta(sha256: &str) -> VersionMeta {
    VersionMeta {
        sha256: sha256.repeat(64 / sha256.len()),
        size: 100,
        deployed_at_ms: 1,
        exports: Vec::new(),
    }
}

/// v1 active (after v0), v2 and v3 stored, no canary.
fn held() -> ServiceRecord {
    let versions = [("v0", "0"), ("v1", "1"), ("v2", "2"), ("v3", "3")]
        .into_iter()
        .map(|(label, sha)| (label.to_string(), meta(sha)))
        .collect();
    ServiceRecord {
        active: "v1".into(),
        canary: None,
        previous: vec!["v0".into()],
        versions,
        manifest: ("v1".into(), "1".repeat(64)),
    }
}

fn with_canary(label: &str, weight: u8) -> ServiceRecord {
    ServiceRecord {
        canary: Some(CanaryRecord {
            version: label.into(),
            weight,
        }),
        ..held()
    }
}

fn refusal(result: Result<Transition, RegistryError>) -> String {
    match result {
        Err(RegistryError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn invalid(result: Result<Transition, RegistryError>) -> String {
    match result {
        Err(RegistryError::InvalidVersion(why)) => why,
        other => panic!("expected an invalid input, got {other:?}"),
    }
}

fn unknown(result: Result<Transition, RegistryError>) -> String {
    match result {
        Err(RegistryError::UnknownVersion { version, .. }) => version,
        other => panic!("expected an unknown version, got {other:?}"),
    }
}

#[test]
fn deploy_stores_and_activates() -> Result<(), RegistryError> {
    let next = deploy(&held(), "svc", "v4", meta("4"), DeployMode::Activate, NOW)?;
    assert_eq!(next.record.active, "v4");
    assert_eq!(next.record.previous, ["v0", "v1"]);
    assert_eq!(next.record.versions["v4"], meta("4"));
    let expected = HistoryEntry::new("deploy", "v4", NOW).from("v1");
    assert_eq!(next.entry, expected);
    Ok(())
}

#[test]
fn deploy_as_canary_or_store_only() -> Result<(), RegistryError> {
    let next = deploy(&held(), "svc", "v4", meta("4"), DeployMode::Canary(20), NOW)?;
    assert_eq!(next.record.active, "v1");
    assert_eq!(next.record.canary, with_canary("v4", 20).canary);
    assert_eq!(next.entry.weight, Some(20));

    let next = deploy(&held(), "svc", "v4", meta("4"), DeployMode::Store, NOW)?;
    let mut expected = held();
    expected.versions.insert("v4".into(), meta("4"));
    assert_eq!(next.record, expected, "stored, nothing routed");
    assert_eq!(next.entry.detail.as_deref(), Some("stored, not routed to"));
    Ok(())
}

#[test]
fn deploying_what_is_there_changes_nothing() -> Result<(), RegistryError> {
    let next = deploy(&held(), "svc", "v1", meta("1"), DeployMode::Activate, NOW)?;
    assert_eq!(next.record, held());
    let next = deploy(&held(), "svc", "v2", meta("2"), DeployMode::Store, NOW)?;
    assert_eq!(next.record, held());
    Ok(())
}

#[test]
fn deploy_refusals() {
    match deploy(&held(), "svc", "v2", meta("9"), DeployMode::Activate, NOW) {
        Err(RegistryError::VersionConflict {
            label,
            existing_sha256,
            ..
        }) => {
            assert_eq!(label, "v2");
            assert_eq!(existing_sha256, meta("2").sha256);
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    for weight in [0, 101] {
        let why = invalid(deploy(
            &held(),
            "svc",
            "v4",
            meta("4"),
            DeployMode::Canary(weight),
            NOW,
        ));
        assert_eq!(
            why,
            format!("a canary weight is a percentage from 1 to 100, got {weight}")
        );
    }
    let why = refusal(deploy(
        &held(),
        "svc",
        "v1",
        meta("1"),
        DeployMode::Canary(10),
        NOW,
    ));
    assert!(why.contains("a canary must be another version"), "{why}");
}

#[test]
fn activate_a_stored_version() -> Result<(), RegistryError> {
    let next = activate(&held(), "svc", "v2", NOW)?;
    assert_eq!(next.record.active, "v2");
    assert_eq!(next.record.previous, ["v0", "v1"]);
    assert_eq!(
        next.entry,
        HistoryEntry::new("activate", "v2", NOW).from("v1")
    );

    let next = activate(&with_canary("v3", 10), "svc", "v3", NOW)?;
    assert_eq!(next.record.canary, None, "activating the canary ends it");
    Ok(())
}

#[test]
fn activate_refusals() {
    assert_eq!(unknown(activate(&held(), "svc", "v9", NOW)), "v9");
    let why = refusal(activate(&held(), "svc", "v1", NOW));
    assert_eq!(
        why,
        r#"version "v1" is already the active version of "svc""#
    );
}

#[test]
fn set_and_end_a_canary() -> Result<(), RegistryError> {
    let next = set_canary(&held(), "svc", "v2", 30, NOW)?;
    assert_eq!(next.record, with_canary("v2", 30));
    let expected = HistoryEntry::new("canary", "v2", NOW).from("v1").weight(30);
    assert_eq!(next.entry, expected);

    let next = set_canary(&with_canary("v2", 30), "svc", "v2", 100, NOW)?;
    assert_eq!(next.record, with_canary("v2", 100), "reweighted");
    let next = set_canary(&with_canary("v2", 30), "svc", "v3", 5, NOW)?;
    assert_eq!(next.record, with_canary("v3", 5), "replaced");
    let next = set_canary(&with_canary("v2", 30), "svc", "v2", 0, NOW)?;
    assert_eq!(next.record, held(), "weight 0 ends it");
    assert_eq!(next.entry.weight, Some(0));
    Ok(())
}

#[test]
fn set_canary_refusals() {
    let why = invalid(set_canary(&held(), "svc", "v2", 101, NOW));
    assert_eq!(
        why,
        "a canary weight is a percentage from 0 to 100, got 101"
    );
    assert_eq!(unknown(set_canary(&held(), "svc", "v9", 10, NOW)), "v9");
    let why = refusal(set_canary(&held(), "svc", "v1", 10, NOW));
    assert!(why.contains("is the active version"), "{why}");
    let why = refusal(set_canary(&with_canary("v2", 30), "svc", "v3", 0, NOW));
    assert!(why.contains("weight 0 ends a canary"), "{why}");
}

#[test]
fn promote_the_canary() -> Result<(), RegistryError> {
    let next = promote(&with_canary("v3", 10), "svc", NOW)?;
    assert_eq!(next.record.active, "v3");
    assert_eq!(next.record.canary, None);
    assert_eq!(next.record.previous, ["v0", "v1"]);
    assert_eq!(
        next.entry,
        HistoryEntry::new("promote", "v3", NOW).from("v1")
    );

    let why = refusal(promote(&held(), "svc", NOW));
    assert_eq!(why, r#"service "svc" has no canary to promote"#);
    Ok(())
}

#[test]
fn rollback_ends_the_canary_first() -> Result<(), RegistryError> {
    let next = rollback(&with_canary("v3", 10), "svc", None, NOW)?;
    assert_eq!(next.record, held());
    let expected = HistoryEntry::new("rollback", "v1", NOW)
        .detail(r#"canary "v3" removed"#)
        .weight(0);
    assert_eq!(next.entry, expected);
    Ok(())
}

#[test]
fn rollback_walks_back_the_stack() -> Result<(), RegistryError> {
    let next = rollback(&held(), "svc", None, NOW)?;
    assert_eq!(next.record.active, "v0");
    assert!(next.record.previous.is_empty());
    assert_eq!(
        next.entry,
        HistoryEntry::new("rollback", "v0", NOW).from("v1")
    );

    let why = refusal(rollback(&next.record, "svc", None, NOW));
    assert!(why.contains("no canary and no previous version"), "{why}");
    Ok(())
}

#[test]
fn auto_rollback_only_of_the_judged_canary() -> Result<(), RegistryError> {
    let judged = AutoRollback {
        canary: "v3".into(),
        reason: "too many failures".into(),
    };
    let next = rollback(&with_canary("v3", 10), "svc", Some(&judged), NOW)?;
    assert_eq!(next.record, held());
    assert_eq!(next.entry.action, "auto-rollback");
    let detail = next.entry.detail.as_deref();
    assert_eq!(detail, Some(r#"canary "v3" removed: too many failures"#));

    for changed in [with_canary("v2", 10), held()] {
        let why = refusal(rollback(&changed, "svc", Some(&judged), NOW));
        assert_eq!(why, r#"canary "v3" of "svc" is no longer the canary"#);
    }
    Ok(())
}

fn desired(label: &str, sha: &str) -> (String, String) {
    (label.to_string(), meta(sha).sha256)
}

#[test]
fn manifest_makes_a_first_record() {
    let path = Path::new("registry/svc/v1.wasm");
    let next = manifest_change(None, desired("v1", "1"), meta("1"), path, NOW);
    assert_eq!(next.record.active, "v1");
    assert!(next.record.previous.is_empty());
    assert_eq!(next.record.manifest, desired("v1", "1"));
    let expected = HistoryEntry::new("manifest", "v1", NOW).detail("from registry/svc/v1.wasm");
    assert_eq!(next.entry, expected, "no `from` without a version before");
}

#[test]
fn manifest_activates_its_version_and_ends_the_canary() {
    let path = Path::new("v4.wasm");
    let held = with_canary("v3", 10);
    let next = manifest_change(Some(&held), desired("v4", "4"), meta("4"), path, NOW);
    assert_eq!(next.record.active, "v4");
    assert_eq!(next.record.canary, None);
    assert_eq!(next.record.previous, ["v0", "v1"]);
    assert_eq!(next.record.manifest, desired("v4", "4"));
    assert_eq!(next.entry.from.as_deref(), Some("v1"));

    // Back to a stored version with the same content: no new label.
    let next = manifest_change(Some(&held), desired("v2", "2"), meta("2"), path, NOW);
    assert_eq!(next.record.active, "v2");
    assert_eq!(next.record.versions.len(), held.versions.len());
}

#[test]
fn manifest_rebuilt_content_gets_a_new_label() {
    let path = Path::new("v1.wasm");
    let next = manifest_change(Some(&held()), desired("v1", "9"), meta("9"), path, NOW);
    assert_eq!(next.record.active, "v1+99999999");
    assert_eq!(next.record.versions["v1+99999999"], meta("9"));
    assert_eq!(
        next.record.versions["v1"],
        meta("1"),
        "the old content stays"
    );
    assert_eq!(next.entry.version, "v1+99999999");
    assert_eq!(next.entry.from.as_deref(), Some("v1"));

    // The suffix keeps a label within 64 characters.
    let long = "x".repeat(64);
    let mut stored = held();
    stored.versions.insert(long.clone(), meta("1"));
    let next = manifest_change(Some(&stored), desired(&long, "9"), meta("9"), path, NOW);
    assert_eq!(next.record.active, format!("{}+99999999", "x".repeat(55)));
    assert_eq!(next.record.active.len(), 64);
}
