//! What one invocation's `Store` holds: the WASI contexts, the capabilities granted to
//! the service (each capability builds its part of [`ServiceGrants`] once per service
//! and its per-invocation state from that and the [`RequestContext`]), and the memory
//! limiter.

use super::auth::AuthGrant;
use super::events::{EventsGrant, Publisher};
use super::kv::KvGrant;
use super::log::{GuestOutput, ServiceLog, Serving};
use super::outgoing::{Egress, HttpGrant, Outgoing, ServiceCaller};
use crate::auth::{Auth, Identity};
use crate::bus::unit::UnitOfWork;
use crate::config::{Limits, ServiceSpec};
use crate::store::Storage;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// What a service is granted, built once from its manifest entry when its slot is made
/// and shared by all its invocations.
pub(crate) struct ServiceGrants {
    /// The service: its keyspace and the source of its events.
    pub(crate) service: String,
    pub(crate) kv: KvGrant,
    pub(crate) events: EventsGrant,
    pub(crate) http: HttpGrant,
    pub(crate) auth: AuthGrant,
    /// The service's `[service.config]` and `[service.secrets]` values.
    pub(crate) config: Arc<WasiConfigVariables>,
    /// Memory, CPU time and instance reuse of one invocation.
    pub(crate) limits: Limits,
    /// Where its guests' stdout and stderr lines go.
    pub(crate) log: Arc<ServiceLog>,
}

impl ServiceGrants {
    pub(crate) fn new(
        spec: &ServiceSpec,
        storage: Arc<Storage>,
        auth: Arc<Auth>,
        log: Arc<ServiceLog>,
    ) -> ServiceGrants {
        ServiceGrants {
            service: spec.name.to_string(),
            kv: KvGrant::new(storage, &spec.limits),
            events: EventsGrant::new(spec),
            http: HttpGrant::new(spec),
            auth: AuthGrant::new(spec, auth),
            config: Arc::new(
                spec.config
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
                    .chain(
                        spec.secrets
                            .iter()
                            .map(|(name, secret)| (name.as_str(), secret.value())),
                    )
                    .collect(),
            ),
            limits: spec.limits,
            log,
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.limits.memory_mib as usize * 1024 * 1024
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.limits.timeout_ms)
    }
}

/// The request one invocation serves: the version that runs it, and what the host
/// passes on with its calls and events.
#[derive(Clone, Default)]
pub(crate) struct RequestContext {
    pub(crate) version: String,
    /// W3C trace context to stamp on published events and pass on with outgoing calls.
    pub(crate) traceparent: Option<String>,
    /// The edge request's `x-request-id`, passed on with outgoing calls.
    pub(crate) request_id: Option<String>,
    /// Verified identity of the request being served, passed on to calls it makes.
    pub(crate) identity: Option<Identity>,
    /// Service-to-service hops that led to this invocation.
    pub(crate) hops: u32,
    /// Who serves the guest's calls to other services (the dispatcher).
    pub(crate) caller: Option<Arc<dyn ServiceCaller>>,
    /// Opens the spans of the invocation's outgoing calls and publishes.
    pub(crate) tracer: crate::telemetry::Tracer,
}

impl RequestContext {
    pub(crate) fn new(version: &str) -> RequestContext {
        RequestContext {
            version: version.to_string(),
            ..RequestContext::default()
        }
    }
}

/// Per-invocation store data. A new one for every request (or renewed, for a warm
/// instance): nothing a guest does survives the invocation except committed writes.
pub(crate) struct InvocationState {
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    /// The request its stdout/stderr lines are tagged with.
    serving: Arc<parking_lot::Mutex<Serving>>,
    http_ctx: WasiHttpCtx,
    /// What this invocation may use, and what it did.
    pub(crate) granted: Granted,
}

/// One invocation's capabilities and effects, built from the service's grants and the
/// request.
pub(crate) struct Granted {
    pub(crate) kv: KvGrant,
    pub(crate) events: Publisher,
    pub(crate) auth: AuthGrant,
    /// Where the guest's outgoing HTTP requests may go.
    pub(crate) http: Outgoing,
    pub(crate) config: Arc<WasiConfigVariables>,
    /// The invocation's buffered effects: key-value writes and published events.
    pub(crate) unit: UnitOfWork,
    pub(crate) limiter: MemoryLimiter,
}

impl Granted {
    fn new(grants: &ServiceGrants, request: &RequestContext, egress: &Arc<Egress>) -> Granted {
        Granted {
            kv: grants.kv.clone(),
            events: grants.events.publisher(request),
            auth: grants.auth.clone(),
            http: grants.http.outgoing(request, egress),
            config: grants.config.clone(),
            unit: UnitOfWork::new(&grants.service),
            limiter: MemoryLimiter {
                memory_bytes: grants.memory_bytes(),
                hit: false,
            },
        }
    }
}

impl InvocationState {
    /// The state of a new instance of the service of `grants` serving `request`; its
    /// outside calls connect where `egress` permits.
    pub(crate) fn new(
        grants: &ServiceGrants,
        request: &RequestContext,
        egress: &Arc<Egress>,
    ) -> Self {
        // No environment, arguments, preopened directories or network: a guest gets only
        // what its manifest grants (outgoing HTTP goes through `Outgoing`, never a
        // socket of its own). Its stdout/stderr go to the host's. The socket denials are
        // wasmtime-wasi's defaults too; they are spelled out so no upgrade relaxes them.
        let serving = Arc::new(parking_lot::Mutex::new(Serving::of(request)));
        let output = |stream| GuestOutput::new(grants.log.clone(), serving.clone(), stream);
        let wasi = WasiCtx::builder()
            .stdout(output("stdout"))
            .stderr(output("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        // Every handle a guest holds is host memory its own memory limit does not see.
        let mut table = ResourceTable::new();
        table.set_max_capacity(grants.limits.resources as usize);
        InvocationState {
            table,
            wasi,
            serving,
            http_ctx: WasiHttpCtx::new(),
            granted: Granted::new(grants, request, egress),
        }
    }

    /// Gives a warm instance's state to the next request: its grants and identity, an
    /// empty unit of work, the memory limiter reset. The WASI contexts stay.
    pub(crate) fn renew(
        &mut self,
        grants: &ServiceGrants,
        request: &RequestContext,
        egress: &Arc<Egress>,
    ) {
        self.granted = Granted::new(grants, request, egress);
        *self.serving.lock() = Serving::of(request);
    }

    /// The invocation's effects, leaving an empty unit of work behind.
    pub(crate) fn take_unit(&mut self) -> UnitOfWork {
        let empty = UnitOfWork::new(&self.granted.unit.service);
        std::mem::replace(&mut self.granted.unit, empty)
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
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.granted.http,
        }
    }
}

/// Caps a store's linear memory at the service's limit and remembers whether the guest
/// ran into it, so the failure can be reported as what it is.
pub(crate) struct MemoryLimiter {
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
