//! `serve --watch`: re-applies the manifest when it, or a component file it names,
//! changes on disk (the dev loop: `just watch` rebuilds components, the host picks them
//! up).

use super::Registry;
use crate::config::Manifest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the files are looked at.
const POLL: Duration = Duration::from_millis(500);

type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Modification times and sizes of the manifest and of every component it names.
fn fingerprint(path: &Path) -> Fingerprint {
    let mut files = vec![(path.to_path_buf(), stamp(path))];
    if let Ok(manifest) = Manifest::load(path) {
        for spec in &manifest.services {
            let component = manifest.component_path(spec);
            let stamp = stamp(&component);
            files.push((component, stamp));
        }
    }
    files
}

pub(crate) fn spawn(
    registry: Arc<Registry>,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(manifest = %path.display(), "watching the manifest and its components");
        let mut last = fingerprint(&path);
        while !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => continue,
            }
            let now = fingerprint(&path);
            if now == last {
                continue;
            }
            last = now;
            match Manifest::load(&path) {
                Ok(manifest) => {
                    let report = registry.apply(&manifest).await;
                    for refusal in &report.refused {
                        tracing::warn!(service = %refusal.service, reason = %refusal.reason, "change not applied");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the changed manifest was not applied"),
            }
        }
    })
}
