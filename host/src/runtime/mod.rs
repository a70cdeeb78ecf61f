//! The WebAssembly runtime: one wasmtime `Engine` for the process (pooling allocator,
//! copy-on-write memory images, epoch interruption), one `Linker` built once, a
//! [`Prepared`] component per version, and a fresh `Store` per invocation.

mod component;
mod invoke;

use crate::capability::Egress;
pub(crate) use crate::capability::InvocationState;
pub(crate) use component::{ComponentError, Prepared, SUBSCRIBER};
pub(crate) use invoke::InvokeError;

use anyhow::Context as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of CPU deadlines and of yielding a
/// busy guest back to the async scheduler.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of a linear memory kept resident when its pool slot is freed: the dirty pages
/// up to this size are reset to the memory's initial contents in place (found with the
/// `PAGEMAP_SCAN` ioctl where the kernel has it, Linux 6.7+) instead of being unmapped,
/// so the next instance in the slot starts from the same fresh state without an
/// `madvise`, a TLB shootdown and a page fault per page. Larger memories are reset with
/// `madvise` beyond this size. Bounds the resident memory a warm slot keeps.
const MEMORY_KEEP_RESIDENT: usize = 2 * 1024 * 1024;
/// The same for tables.
const TABLE_KEEP_RESIDENT: usize = 64 * 1024;
/// Slot decommits (`madvise`) are batched by this many, sharing one TLB shootdown.
const DECOMMIT_BATCH: usize = 32;

/// Settings of the runtime, fixed for the life of the process.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeConfig {
    /// Most instances alive at once (each concurrent invocation holds one). The pool
    /// reserves address space for this many memories up front.
    pub(crate) max_instances: u32,
    /// The largest memory limit a service may ask for, in MiB.
    pub(crate) max_memory_mib: u32,
    /// Where precompiled components are cached; `None` disables the cache.
    pub(crate) cache_dir: Option<PathBuf>,
    /// Where guests' outside HTTP calls may connect (not the host's own listeners).
    pub(crate) egress: Arc<Egress>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 1000,
            max_memory_mib: 1024,
            cache_dir: None,
            egress: Arc::default(),
        }
    }
}

/// The pool's share per component instance (its totals are these times
/// `max_instances`), sized for the largest components the host is known to run:
/// componentize-py's (one memory of 13 MiB at start, 2 tables of up to 5,884 elements,
/// 14 core modules) and componentize-js's (one memory of 9 MiB, 2 tables of up to 7,798
/// elements). Rust components need one memory and two small tables. A component over
/// them is refused at deploy, naming the limit ([`component::ComponentError::TooLarge`]).
pub(crate) const MEMORIES_PER_INSTANCE: u32 = 2;
pub(crate) const TABLES_PER_INSTANCE: u32 = 4;
/// Core instances, on average over the instances running at once (no per-component
/// limit: a Python component has 14 core modules and more core instances).
pub(crate) const CORE_INSTANCES_PER_INSTANCE: u32 = 16;
/// Elements of one table.
pub(crate) const TABLE_ELEMENTS: usize = 20_000;

/// The engine, the linker and the epoch ticker.
pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<InvocationState>,
    config: RuntimeConfig,
    /// Hash of everything that makes a precompiled artifact loadable by this engine.
    compat_hash: String,
}

impl Runtime {
    pub(crate) fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(config.max_instances)
            .total_memories(config.max_instances * MEMORIES_PER_INSTANCE)
            .total_tables(config.max_instances * TABLES_PER_INSTANCE)
            .total_core_instances(config.max_instances * CORE_INSTANCES_PER_INSTANCE)
            .max_memories_per_component(MEMORIES_PER_INSTANCE)
            .max_tables_per_component(TABLES_PER_INSTANCE)
            .table_elements(TABLE_ELEMENTS)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory_mib as usize * 1024 * 1024)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            .pagemap_scan(Enabled::Auto)
            .decommit_batch_size(DECOMMIT_BATCH);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            // Guests are WASIp2 components, called one at a time per instance: without
            // the component-model-async machinery, a store is lighter to create and a
            // call goes straight onto its fiber.
            .concurrency_support(false)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)
            .map_err(anyhow::Error::from)
            .context("failed to create the wasmtime engine")?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::new(&engine);
        crate::capability::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("failed to link host capabilities")?;

        let compat_hash = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        Ok(Runtime {
            engine,
            linker,
            config,
            compat_hash,
        })
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a thread of its own (a tokio
/// task would stall when guests keep the workers busy). Stops when the engine is gone.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("microhost-epoch".to_string())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}
