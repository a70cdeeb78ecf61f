//! Turning wasm bytes into a runnable service version: check that it is a component of
//! the `service` world, compile it (or load the precompiled artifact from the cache),
//! and pre-instantiate it against the linker.

use super::{InvocationState, Runtime};
use crate::capability::SubscriberPre;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The export every service must have.
const HTTP_HANDLER: &str = "wasi:http/incoming-handler";
/// The export a service that subscribes to topics must have.
pub(crate) const SUBSCRIBER: &str = "microhost:platform/subscriber";
/// The optional health export.
pub(super) const LIFECYCLE: &str = "microhost:platform/lifecycle";

/// Why wasm bytes cannot become a service version. Each message says what is wrong and,
/// where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ComponentError {
    #[error("not a WebAssembly file: it does not start with the `\\0asm` magic bytes")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build it for the \
         wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error(
        "the component does not export `{HTTP_HANDLER}`, which the service world requires; \
         it exports: {exports}"
    )]
    MissingHttpHandler { exports: String },
    #[error("the component does not fit the service world: {0}")]
    WrongWorld(String),
    /// It needs more of the instance pool than one instance gets.
    #[error("the component is too large for the host's instance pool: {0}")]
    TooLarge(String),
}

/// A compiled, pre-instantiated component version: cheap to clone and to instantiate.
#[derive(Clone)]
pub(crate) struct Prepared {
    pub(crate) pre: ProxyPre<InvocationState>,
    /// Present when the component exports `microhost:platform/subscriber`.
    pub(crate) subscriber: Option<SubscriberPre<InvocationState>>,
    /// Present when the component exports `microhost:platform/lifecycle`: the
    /// instantiable component and the index of its `health` function.
    pub(crate) health: Option<(InstancePre<InvocationState>, ComponentExportIndex)>,
    /// The component's exports, by name.
    pub(crate) exports: Vec<String>,
    /// Hex sha256 of the wasm bytes.
    pub(crate) sha256: String,
    /// Whether the machine code came from the precompiled cache (no compilation).
    pub(crate) from_cache: bool,
    /// Idle instances kept for services that allow instance reuse.
    pub(crate) warm: Arc<WarmPool>,
}

/// Most idle instances kept per version (each holds a slot of the instance pool).
const MAX_IDLE_INSTANCES: usize = 32;

/// An instance that served a request cleanly and may serve another.
pub(crate) struct Warm {
    pub(crate) store: wasmtime::Store<InvocationState>,
    pub(crate) proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    /// Requests it has served.
    pub(crate) served: u32,
}

/// The idle warm instances of one version, most recently used last.
#[derive(Default)]
pub(crate) struct WarmPool {
    idle: parking_lot::Mutex<Vec<Warm>>,
}

impl WarmPool {
    pub(crate) fn take(&self) -> Option<Warm> {
        self.idle.lock().pop()
    }

    pub(crate) fn put(&self, warm: Warm) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push(warm);
        }
    }
}

impl Prepared {
    /// The same component with an empty warm pool of its own. A warm instance keeps the
    /// memory its requests left, so a pool is never shared by two services (who may
    /// deploy the same content) or two versions.
    pub(crate) fn with_own_warm_pool(mut self) -> Prepared {
        self.warm = Arc::default();
        self
    }

    /// Whether the component can receive events.
    pub(crate) fn is_subscriber(&self) -> bool {
        self.subscriber.is_some()
    }
}

impl Runtime {
    /// Validates and compiles `wasm`. CPU-heavy when not cached: call it from a blocking
    /// thread.
    pub(crate) fn prepare(&self, wasm: &[u8]) -> Result<Prepared, ComponentError> {
        check_header(wasm)?;
        let sha256 = hex::encode(Sha256::digest(wasm));
        let (component, from_cache) = self.compile(wasm, &sha256)?;
        self.check_fit(&component)?;
        let exports = check_exports(&self.engine, &component)?;
        let wrong_world = |e: wasmtime::Error| ComponentError::WrongWorld(format!("{e:#}"));
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let subscriber = if exports.iter().any(|e| versionless(e) == SUBSCRIBER) {
            Some(SubscriberPre::new(instance_pre.clone()).map_err(wrong_world)?)
        } else {
            None
        };
        let health = match exports.iter().find(|e| versionless(e) == LIFECYCLE) {
            Some(name) => {
                let index = component
                    .get_export_index(None, name.as_str())
                    .and_then(|iface| component.get_export_index(Some(&iface), "health"))
                    .ok_or_else(|| {
                        ComponentError::WrongWorld(format!(
                            "`{name}` is exported without its `health` function"
                        ))
                    })?;
                Some((instance_pre.clone(), index))
            }
            None => None,
        };
        let pre = ProxyPre::new(instance_pre).map_err(wrong_world)?;
        Ok(Prepared {
            pre,
            subscriber,
            health,
            exports,
            warm: Arc::default(),
            sha256,
            from_cache,
        })
    }

    /// Refuses a component that defines more memories or tables than one instance gets
    /// of the pool. (wasmtime itself refuses, as it loads the component, a table or a
    /// memory larger than the pool's slots: also [`ComponentError::TooLarge`].)
    fn check_fit(&self, component: &Component) -> Result<(), ComponentError> {
        use super::{MEMORIES_PER_INSTANCE, TABLES_PER_INSTANCE};
        let Some(needs) = component.resources_required() else {
            return Ok(());
        };
        let too_large = |what: String| Err(ComponentError::TooLarge(what));
        if needs.num_memories > MEMORIES_PER_INSTANCE {
            return too_large(format!(
                "it defines {} linear memories; an instance may have {MEMORIES_PER_INSTANCE}",
                needs.num_memories
            ));
        }
        if needs.num_tables > TABLES_PER_INSTANCE {
            return too_large(format!(
                "it defines {} tables; an instance may have {TABLES_PER_INSTANCE}",
                needs.num_tables
            ));
        }
        Ok(())
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.config.cache_dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{}.cwasm", self.compat_hash)))
    }

    fn compile(&self, wasm: &[u8], sha256: &str) -> Result<(Component, bool), ComponentError> {
        let cache = self.cache_path(sha256);
        if let Some(path) = &cache
            && let Some(component) = load_cached(&self.engine, path)
        {
            return Ok((component, true));
        }
        let artifact = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| ComponentError::Invalid(format!("{e:#}")))?;
        if let Some(path) = &cache {
            store_cached(path, &artifact);
        }
        let component = deserialize(&self.engine, &artifact).map_err(|e| {
            let why = format!("{e:#}");
            // wasmtime checks a module's tables and memories against the pool's limits
            // as it loads it.
            if why.contains("pooling allocator") {
                ComponentError::TooLarge(why)
            } else {
                ComponentError::Invalid(why)
            }
        })?;
        Ok((component, false))
    }
}

fn check_header(wasm: &[u8]) -> Result<(), ComponentError> {
    if wasm.len() < 8 || &wasm[0..4] != b"\0asm" {
        return Err(ComponentError::NotWasm);
    }
    // Bytes 4..8 are the version and layer: 1.0 is a core module, 0x0d 0x00 0x01 0x00 a
    // component.
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(ComponentError::CoreModule);
    }
    Ok(())
}

fn versionless(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// Checks for the HTTP handler export; returns the names of all exports.
fn check_exports(
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<Vec<String>, ComponentError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if names.iter().any(|n| versionless(n) == HTTP_HANDLER) {
        return Ok(names);
    }
    let exports = if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    };
    Err(ComponentError::MissingHttpHandler { exports })
}

fn load_cached(engine: &wasmtime::Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    match deserialize(engine, &bytes) {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unusable precompiled artifact");
            None
        }
    }
}

/// Writes the artifact next to its final name, then renames it into place, so a reader
/// never sees half a file.
fn store_cached(path: &Path, artifact: &[u8]) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, artifact)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "could not cache precompiled component");
    }
}

#[allow(
    unsafe_code,
    reason = "loading precompiled machine code is unsafe by nature; see the SAFETY note"
)]
fn deserialize(engine: &wasmtime::Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` is either what `Engine::precompile_component` just returned,
    // or a file from the host's own cache directory, named by the wasm's sha256 and this
    // engine's compatibility hash, and written by `store_cached`. wasmtime checks the
    // header and the engine compatibility; the cache directory must be as trusted as the
    // host binary (it lives under the data directory by default).
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_too_large_for_the_pool_is_refused_naming_the_limit() -> anyhow::Result<()> {
        let runtime = Runtime::new(super::super::RuntimeConfig {
            max_instances: 4,
            max_memory_mib: 64,
            cache_dir: None,
            egress: std::sync::Arc::new(crate::capability::Egress::new(&[])),
        })?;
        let cases = [
            (
                "(core module (table 30000 funcref))",
                "exceeds the limit of 20000",
            ),
            (
                "(core module (memory 2048)) (core module (table 1 funcref))",
                "minimum byte size of 134217728",
            ),
            (
                "(core module (table 1 funcref)) (core module (table 1 funcref)) \
                 (core module (table 1 funcref)) (core module (table 1 funcref)) \
                 (core module (table 1 funcref))",
                "5 tables",
            ),
        ];
        for (modules, why) in cases {
            // Every core module instantiated, so that its resources count.
            let count = modules.matches("(core module").count();
            let instances: String = (0..count)
                .map(|i| format!("(core instance (instantiate {i}))"))
                .collect();
            let wasm = wat::parse_str(format!("(component {modules} {instances})"))?;
            match runtime.prepare(&wasm) {
                Err(e @ ComponentError::TooLarge(_)) => {
                    assert!(e.to_string().contains(why), "{why}: {e}")
                }
                Err(other) => panic!("{why}: {other}"),
                Ok(_) => panic!("{why}: accepted"),
            }
        }
        Ok(())
    }

    #[test]
    fn header_checks() {
        assert!(matches!(
            check_header(b"hello"),
            Err(ComponentError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"not wasm at all"),
            Err(ComponentError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(ComponentError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
