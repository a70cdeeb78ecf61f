//! What one invocation's `Store` holds: the WASI contexts, the capabilities granted to
//! the service, and the memory limiter.

use super::events::Publisher;
use super::kv::KvReader;
use super::outgoing::Outgoing;
use crate::bus::unit::UnitOfWork;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Per-invocation store data. A new one for every request: nothing a guest does
/// survives the invocation except committed key-value writes.
pub struct InvocationState {
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    /// Where the guest's outgoing HTTP requests may go.
    outgoing: Outgoing,
    pub(crate) auth: Arc<crate::auth::Auth>,
    /// The service's `[service.config]` values, shared by all its invocations.
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) kv: KvReader,
    pub(crate) publisher: Publisher,
    /// The invocation's buffered effects: key-value writes and published events.
    pub(crate) unit: UnitOfWork,
    pub(crate) limiter: MemoryLimiter,
}

/// What an invocation is granted: the service's capabilities and this request's
/// identity and trace context (inside `outgoing` and `publisher`).
pub struct Grants {
    pub config: Arc<WasiConfigVariables>,
    pub kv: KvReader,
    pub publisher: Publisher,
    pub outgoing: Outgoing,
    pub auth: Arc<crate::auth::Auth>,
    pub memory_bytes: usize,
}

impl InvocationState {
    pub fn new(grants: Grants) -> Self {
        // No environment, arguments, preopened directories or network: a guest gets only
        // what its manifest grants. Its stdout/stderr go to the host's.
        let wasi = WasiCtx::builder().inherit_stdout().inherit_stderr().build();
        let Grants {
            config,
            kv,
            publisher,
            outgoing,
            auth,
            memory_bytes,
        } = grants;
        InvocationState {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            outgoing,
            auth,
            config,
            kv,
            unit: UnitOfWork::new(&publisher.service),
            publisher,
            limiter: MemoryLimiter {
                memory_bytes,
                hit: false,
            },
        }
    }

    /// Gives a warm instance's state to the next request: its grants and identity, an
    /// empty unit of work, the memory limiter reset. The WASI contexts stay.
    pub fn renew(&mut self, grants: Grants) {
        let Grants {
            config,
            kv,
            publisher,
            outgoing,
            auth,
            memory_bytes,
        } = grants;
        self.config = config;
        self.kv = kv;
        self.unit = UnitOfWork::new(&publisher.service);
        self.publisher = publisher;
        self.outgoing = outgoing;
        self.auth = auth;
        self.limiter = MemoryLimiter {
            memory_bytes,
            hit: false,
        };
    }

    /// The invocation's effects, leaving an empty unit of work behind.
    pub fn take_unit(&mut self) -> UnitOfWork {
        let empty = UnitOfWork::new(&self.publisher.service);
        std::mem::replace(&mut self.unit, empty)
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing,
        }
    }
}

/// Caps a store's linear memory at the service's limit and remembers whether the guest
/// ran into it, so the failure can be reported as what it is.
pub struct MemoryLimiter {
    memory_bytes: usize,
    pub(crate) hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a generous fixed cap keeps a guest from
        // growing them without bound.
        Ok(desired <= 1_000_000)
    }
}
