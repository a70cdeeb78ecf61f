//! The service registry: which services exist, which component version of each is
//! active, and the atomic switch from one version to the next.
//!
//! Each service has a slot holding its active [`Version`]. A request clones the `Arc` of
//! the version active when it starts and keeps it to the end, so a deploy never changes
//! the version under a running request; the old version is freed when its last request
//! finishes.

pub mod manifest;

use crate::runtime::{ComponentError, InvocationContext, Prepared, Runtime};
use crate::store::Storage;
use anyhow::Context as _;
use bytes::Bytes;
use manifest::{BreakerSpec, Limits, Manifest, PublicRule, SubscriptionSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use wasmtime_wasi_config::WasiConfigVariables;

/// One component version of a service, ready to serve.
pub struct Version {
    pub label: String,
    pub prepared: Prepared,
    pub deployed_at: SystemTime,
    /// Requests running on this version now.
    in_flight: AtomicUsize,
    /// Requests this version has started.
    served: AtomicU64,
}

impl Version {
    fn new(label: String, prepared: Prepared) -> Version {
        Version {
            label,
            prepared,
            deployed_at: SystemTime::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Counts a request on a version for as long as it lives.
pub struct InFlight(Arc<Version>);

impl InFlight {
    pub fn version(&self) -> &Arc<Version> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service and its active version.
pub struct ServiceSlot {
    pub name: String,
    pub route: String,
    pub limits: Limits,
    /// Topics the service may publish to.
    pub publishes: Arc<BTreeSet<String>>,
    pub subscriptions: Vec<SubscriptionSpec>,
    /// Requests need a verified token, except those matching `public`.
    pub protected: bool,
    pub public: Vec<PublicRule>,
    /// Services it may call, and outside hosts it may reach.
    pub calls: Arc<BTreeSet<String>>,
    pub allowed_hosts: Arc<BTreeSet<String>>,
    /// How callers' circuit breakers treat this service.
    pub breaker: BreakerSpec,
    config: Arc<WasiConfigVariables>,
    storage: Arc<dyn Storage>,
    auth: Arc<crate::auth::Auth>,
    /// Read on every request, written by deploys; never held across an `.await`.
    active: RwLock<Arc<Version>>,
}

impl ServiceSlot {
    /// The active version, pinned for one request.
    pub fn pin(&self) -> InFlight {
        let version = self
            .active
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        version.in_flight.fetch_add(1, Ordering::Relaxed);
        version.served.fetch_add(1, Ordering::Relaxed);
        InFlight(version)
    }

    pub fn active(&self) -> Arc<Version> {
        self.active
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Makes `version` active; returns the one it replaced.
    fn activate(&self, version: Arc<Version>) -> Arc<Version> {
        let mut active = self
            .active
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *active, version)
    }

    /// Whether a request needs a verified token.
    pub fn requires_token(&self, method: &str, path: &str) -> bool {
        self.protected && !self.public.iter().any(|rule| rule.matches(method, path))
    }

    /// What an invocation of `version` of this service may use. The caller fills in
    /// who serves its outgoing calls, the identity and the trace context.
    pub fn invocation_context(&self, version: &str) -> InvocationContext {
        InvocationContext {
            service: self.name.clone(),
            version: version.to_string(),
            storage: self.storage.clone(),
            config: self.config.clone(),
            publishes: self.publishes.clone(),
            traceparent: None,
            auth: self.auth.clone(),
            calls: self.calls.clone(),
            caller: None,
            allowed_hosts: self.allowed_hosts.clone(),
            identity: None,
            hops: 0,
            memory_bytes: self.limits.memory_mib as usize * 1024 * 1024,
            timeout: Duration::from_millis(self.limits.timeout_ms),
        }
    }
}

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("service {name:?} does not exist")]
    UnknownService { name: String },
    #[error("{0}")]
    InvalidVersion(String),
    #[error("{0}")]
    Component(#[from] ComponentError),
    #[error(
        "version {label:?} of service {service:?} is active with different content \
         (sha256 {active_sha256}); deploy under a new version label"
    )]
    VersionConflict {
        service: String,
        label: String,
        active_sha256: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a successful deploy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    pub service: String,
    pub version: String,
    pub sha256: String,
    pub previous: String,
    /// False when the version was already active (nothing changed).
    pub switched: bool,
    pub from_cache: bool,
}

/// The contract gate: a version must export what the manifest routes it to. (The HTTP
/// handler is checked for every component by the runtime.)
fn check_contract(
    service: &str,
    subscriptions: &[SubscriptionSpec],
    prepared: &Prepared,
) -> Result<(), ComponentError> {
    if let Some(sub) = subscriptions.first()
        && !prepared.is_subscriber()
    {
        return Err(ComponentError::WrongWorld(format!(
            "service {service:?} subscribes to topic {:?}, but the component does not export \
             `{}`",
            sub.topic,
            crate::runtime::SUBSCRIBER
        )));
    }
    Ok(())
}

/// All services, by name.
pub struct Registry {
    runtime: Arc<Runtime>,
    services: BTreeMap<String, Arc<ServiceSlot>>,
}

impl Registry {
    /// Builds every service of the manifest: reads and compiles its component (or loads
    /// it from the cache) and opens its keyspace.
    pub async fn load(
        manifest: &Manifest,
        runtime: Arc<Runtime>,
        storage: Arc<dyn Storage>,
        auth: Arc<crate::auth::Auth>,
    ) -> anyhow::Result<Registry> {
        let mut services = BTreeMap::new();
        for spec in &manifest.services {
            let path = manifest.component_path(spec);
            let wasm = std::fs::read(&path).with_context(|| {
                format!(
                    "service {:?}: failed to read component {path:?} (run `just build-components`?)",
                    spec.name
                )
            })?;
            let rt = runtime.clone();
            let prepared = tokio::task::spawn_blocking(move || rt.prepare(&wasm))
                .await
                .context("compiling a component panicked")?
                .with_context(|| format!("service {:?}: component {path:?}", spec.name))?;
            check_contract(&spec.name, &spec.subscribe, &prepared)
                .with_context(|| format!("service {:?}: component {path:?}", spec.name))?;
            tracing::info!(
                service = %spec.name,
                version = %spec.component.version,
                sha256 = %&prepared.sha256[..12],
                cached = prepared.from_cache,
                "service ready"
            );
            let slot = ServiceSlot {
                name: spec.name.clone(),
                route: spec.route.clone(),
                limits: spec.limits,
                publishes: Arc::new(spec.publishes.iter().cloned().collect()),
                subscriptions: spec.subscribe.clone(),
                protected: spec.protected,
                public: spec
                    .public
                    .iter()
                    .map(|rule| PublicRule::parse(rule).map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<_>>()?,
                calls: Arc::new(spec.calls.iter().cloned().collect()),
                allowed_hosts: Arc::new(spec.allowed_hosts.iter().cloned().collect()),
                breaker: spec.breaker,
                config: Arc::new(spec.config.iter().collect()),
                storage: storage.clone(),
                auth: auth.clone(),
                active: RwLock::new(Arc::new(Version::new(
                    spec.component.version.clone(),
                    prepared,
                ))),
            };
            services.insert(spec.name.clone(), Arc::new(slot));
        }
        Ok(Registry { runtime, services })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ServiceSlot>> {
        self.services.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceSlot>> {
        self.services.values()
    }

    /// Validates and compiles `wasm`, then atomically makes it the active version of
    /// `service`. On any error the active version is untouched. Requests already running
    /// finish on the version they started on.
    pub async fn deploy(
        &self,
        service: &str,
        label: Option<String>,
        wasm: Bytes,
    ) -> Result<Deployed, RegistryError> {
        let slot = self
            .services
            .get(service)
            .ok_or_else(|| RegistryError::UnknownService {
                name: service.to_string(),
            })?;
        if let Some(label) = &label {
            manifest::check_version(label).map_err(RegistryError::InvalidVersion)?;
        }
        let runtime = self.runtime.clone();
        let prepared = tokio::task::spawn_blocking(move || runtime.prepare(&wasm))
            .await
            .map_err(|e| RegistryError::Internal(format!("compilation panicked: {e}")))??;
        check_contract(service, &slot.subscriptions, &prepared)?;
        let label = label.unwrap_or_else(|| prepared.sha256[..12].to_string());

        let active = slot.active();
        if active.label == label {
            if active.prepared.sha256 != prepared.sha256 {
                return Err(RegistryError::VersionConflict {
                    service: service.to_string(),
                    label,
                    active_sha256: active.prepared.sha256.clone(),
                });
            }
            return Ok(Deployed {
                service: service.to_string(),
                version: label.clone(),
                sha256: prepared.sha256.clone(),
                previous: label,
                switched: false,
                from_cache: prepared.from_cache,
            });
        }
        let deployed = Deployed {
            service: service.to_string(),
            version: label.clone(),
            sha256: prepared.sha256.clone(),
            previous: String::new(),
            switched: true,
            from_cache: prepared.from_cache,
        };
        let previous = slot.activate(Arc::new(Version::new(label, prepared)));
        tracing::info!(
            service,
            version = %deployed.version,
            previous = %previous.label,
            draining = previous.in_flight(),
            "version activated"
        );
        Ok(Deployed {
            previous: previous.label.clone(),
            ..deployed
        })
    }
}
