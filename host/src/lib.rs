//! microhost: one process that runs a whole microservice system of WebAssembly
//! components: API gateway, service registry, event bus and runtime.
//!
//! The host is a library; `main.rs` only parses arguments. [`start`] brings a host up
//! on the configured addresses and returns a [`Running`] handle; tests start the same
//! library on `127.0.0.1:0`.

pub mod admin;
mod auth;
#[cfg(feature = "bench")]
pub mod bench;
mod body;
mod bus;
mod capability;
pub mod config;
mod dispatch;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod gateway;
mod headers;
mod metrics;
mod outcome;
mod policy;
mod problem;
mod registry;
mod runtime;
mod store;
mod telemetry;

pub use gateway::server::ServerLimits;

use anyhow::{Context as _, bail};
use gateway::server::serve;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Name of the file in the data directory that holds a generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Everything [`start`] needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub manifest: config::Manifest,
    /// Gateway address (`127.0.0.1:3000`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Admin API address; a non-loopback one needs a configured token.
    pub admin_listen: SocketAddr,
    /// Where state (sled) and, by default, the precompiled-component cache live.
    pub data_dir: PathBuf,
    /// Overrides `<data_dir>/cache` for precompiled components.
    pub cache_dir: Option<PathBuf>,
    /// The admin bearer token. `None` on a loopback admin address generates one and
    /// writes it to `<data_dir>/admin-token`.
    pub admin_token: Option<String>,
    /// The HS256 secret for tokens (at least 32 bytes). `None` generates one into
    /// `<data_dir>/jwt-secret` on first start and reuses it after.
    pub jwt_secret: Option<String>,
    pub limits: ServerLimits,
    /// Most concurrent instances (sizes the pooling allocator).
    pub max_instances: u32,
    /// Re-apply the manifest when it or a component it names changes on disk.
    pub watch: bool,
    /// Serve the gateway over TLS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
}

/// A TLS certificate chain and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl HostConfig {
    /// Defaults for everything but the manifest: loopback ports 3000/3100,
    /// `.microhost` as data directory.
    pub fn new(manifest: config::Manifest) -> HostConfig {
        HostConfig {
            manifest,
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 3100)),
            data_dir: PathBuf::from(".microhost"),
            cache_dir: None,
            admin_token: None,
            jwt_secret: None,
            limits: ServerLimits::default(),
            max_instances: 1000,
            watch: false,
            tls: None,
        }
    }
}

/// A host that is serving.
pub struct Running {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The admin bearer token in force (configured or generated).
    pub admin_token: String,
    bus: Arc<bus::Bus>,
    shutdown: watch::Sender<bool>,
    /// The two servers, the subscription loops and the registry's supervisor.
    tasks: Vec<JoinHandle<()>>,
    /// Subscription loops of services added or reconfigured at runtime.
    later: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
    /// The trace exporter, flushed last.
    telemetry: telemetry::Telemetry,
}

impl Running {
    /// The next log offset the subscription of `service` to `topic` will deliver.
    pub fn cursor(&self, topic: &str, service: &str) -> anyhow::Result<u64> {
        Ok(self.bus.cursor(topic, service)?)
    }

    /// Stops accepting connections, lets in-flight requests and deliveries finish (up to
    /// the grace period), and closes the state database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.wait().await;
    }

    /// Waits until the servers have stopped (after [`Running::shutdown_trigger`] or a
    /// signal handled elsewhere).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        let later = std::mem::take(&mut *self.later.lock());
        for task in later {
            let _ = task.await;
        }
        self.telemetry.shutdown().await;
    }

    /// A handle that asks the host to shut down, for signal handlers.
    pub fn shutdown_trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Starts a host: opens the state, compiles every service, binds both listeners.
pub async fn start(config: HostConfig) -> anyhow::Result<Running> {
    let backend = store::SledStorage::open(&config.data_dir)?;
    start_on(config, backend).await
}

/// [`start`] on a given storage backend.
async fn start_on(config: HostConfig, backend: impl store::Backend) -> anyhow::Result<Running> {
    let admin_token = match config.admin_token.clone() {
        Some(token) if token.trim().is_empty() => bail!("the admin token must not be empty"),
        Some(token) => token,
        None if !config.admin_listen.ip().is_loopback() => bail!(
            "refusing to serve the admin API on non-loopback address {} without a token: \
             set MICROHOST_ADMIN_TOKEN (or [admin] token in the manifest)",
            config.admin_listen
        ),
        None => generate_admin_token(&config.data_dir)?,
    };

    let telemetry = telemetry::Telemetry::start(&config.manifest.telemetry)?;
    // Bound first: guests' outside calls must know the host's own addresses (even the
    // health checks while the services load), and never reach them.
    let gateway_listener = gateway::server::listen(config.listen)
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let admin_listener = gateway::server::listen(config.admin_listen)
        .with_context(|| format!("failed to listen on {} (admin)", config.admin_listen))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let Wired {
        registry,
        bus,
        dispatcher,
        gateway,
        admin: admin_app,
        mut started,
    } = wire(
        &config,
        backend,
        &[gateway_addr, admin_addr],
        &admin_token,
        telemetry.tracer(),
    )
    .await?;

    let tls = match &config.tls {
        Some(tls) => Some(gateway::server::tls_acceptor(&tls.cert, &tls.key)?),
        None => None,
    };

    let (shutdown, stop) = watch::channel(false);
    let mut tasks =
        dispatch::delivery::spawn_all(&bus, registry.services().into_iter(), &dispatcher, &stop);
    tasks.push(registry.supervise(stop.clone()));
    tasks.push(dispatch::spawn_sweeper(bus.clone(), stop.clone()));
    let later: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    {
        // Delivery loops for the slots `apply` starts at runtime.
        let (bus, dispatcher, mut stop, later) = (
            bus.clone(),
            dispatcher.downgrade(),
            stop.clone(),
            later.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let slot = tokio::select! {
                    slot = started.recv() => slot,
                    _ = stop.wait_for(|stop| *stop) => None,
                };
                let (Some(slot), Some(dispatcher)) = (slot, dispatcher.upgrade()) else {
                    return;
                };
                let loops = dispatch::delivery::spawn_slot(&bus, &slot, &dispatcher, &stop);
                let mut later = later.lock();
                later.retain(|task| !task.is_finished());
                later.extend(loops);
            }
        }));
    }
    if config.watch {
        match &config.manifest.path {
            Some(path) => tasks.push(registry::watch::spawn(
                registry.clone(),
                path.clone(),
                stop.clone(),
            )),
            None => {
                tracing::warn!("nothing to watch: the host was started without a manifest file")
            }
        }
    }
    let refused = |server: &'static str| {
        let dispatcher = dispatcher.clone();
        move |why: gateway::server::Refusal| {
            dispatcher
                .metrics()
                .connection_refused(server, why.as_str())
        }
    };
    let gateway_server = tokio::spawn(serve(
        "gateway",
        gateway_listener,
        move |peer| {
            let gateway = gateway.clone();
            hyper::service::service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
            })
        },
        config.limits,
        tls,
        stop.clone(),
        refused("gateway"),
    ));
    let admin_server = tokio::spawn(serve(
        "admin",
        admin_listener,
        move |_peer| hyper_util::service::TowerToHyperService::new(admin_app.clone()),
        config.limits,
        None,
        stop,
        refused("admin"),
    ));
    tracing::info!(%gateway_addr, %admin_addr, services = registry.services().len(), "microhost is serving");
    Ok(Running {
        gateway_addr,
        admin_addr,
        admin_token,
        bus,
        shutdown,
        later,
        telemetry,
        tasks: {
            tasks.push(gateway_server);
            tasks.push(admin_server);
            tasks
        },
    })
}

/// The host's parts, wired as [`start`] serves them, before any listener, delivery loop
/// or supervisor runs.
pub(crate) struct Wired {
    pub(crate) registry: Arc<registry::Registry>,
    pub(crate) bus: Arc<bus::Bus>,
    pub(crate) dispatcher: dispatch::Dispatcher,
    pub(crate) gateway: Arc<gateway::Gateway>,
    pub(crate) admin: axum::Router,
    /// The slots `apply` starts at runtime, for their delivery loops.
    pub(crate) started: tokio::sync::mpsc::UnboundedReceiver<Arc<registry::ServiceSlot>>,
}

/// Opens the state on `backend`, builds the runtime (outgoing calls never reach
/// `own_addrs`, the host's listeners), the token keys, the bus, the dispatcher and
/// registry with the manifest's services loaded, the gateway and the admin API.
pub(crate) async fn wire(
    config: &HostConfig,
    backend: impl store::Backend,
    own_addrs: &[SocketAddr],
    admin_token: &str,
    tracer: telemetry::Tracer,
) -> anyhow::Result<Wired> {
    let storage = Arc::new(store::Storage::new(backend));
    let runtime = Arc::new(runtime::Runtime::new(runtime::RuntimeConfig {
        max_instances: config.max_instances,
        max_memory_mib: config::MAX_MEMORY_MIB,
        cache_dir: Some(
            config
                .cache_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("cache")),
        ),
        egress: Arc::new(capability::Egress::new(own_addrs)),
    })?);
    let auth = Arc::new(auth::Auth::for_manifest(
        &auth::Auth::load_secret(config.jwt_secret.as_deref(), &config.data_dir)?,
        &config.manifest,
    )?);
    let bus = bus::Bus::new(storage.clone());
    let (dispatcher, started) = dispatch::Dispatcher::new(
        runtime.clone(),
        bus.clone(),
        tracer,
        registry::RegistryParts {
            runtime,
            storage,
            auth: auth.clone(),
            data_dir: config.data_dir.clone(),
        },
    );
    let registry = dispatcher.registry().clone();
    registry.load(&config.manifest).await?;

    let gateway = Arc::new(gateway::Gateway::new(
        registry.clone(),
        dispatcher.clone(),
        auth,
        gateway::BodyPace::of(&config.limits),
    ));
    let admin = admin::router(
        registry.clone(),
        bus.clone(),
        dispatcher.clone(),
        Arc::from(admin_token),
        config.manifest.path.clone(),
    );
    Ok(Wired {
        registry,
        bus,
        dispatcher,
        gateway,
        admin,
        started,
    })
}

/// A random token, written to `<data_dir>/admin-token` (mode 0600) so that the CLI on
/// the same machine can find it.
fn generate_admin_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("failed to create data directory {data_dir:?}"))?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    store::write_private(&path, &token).with_context(|| format!("failed to write {path:?}"))?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::guarded_tests::{FailingFlush, copy_dir};
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::sync::atomic::Ordering;

    async fn send(
        method: &str,
        url: String,
        body: &'static str,
    ) -> anyhow::Result<(http::StatusCode, String)> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(Bytes::from_static(body.as_bytes())))?;
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    fn manifest(dir: &std::path::Path) -> anyhow::Result<config::Manifest> {
        let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../components/target/wasm32-wasip2/release/test_kv.wasm");
        anyhow::ensure!(
            wasm.exists(),
            "{wasm:?} is missing: run `just build-components`"
        );
        let text = format!(
            "[[service]]\nname = \"kv\"\nroute = \"/\"\ncomponent = {{ path = {:?}, version = \"v1\" }}\n",
            wasm.display().to_string()
        );
        Ok(config::Manifest::from_toml(
            &text,
            &dir.join("microhost.toml"),
            dir.to_path_buf(),
        )?)
    }

    /// A flush failure injected through the storage trait: the write is answered 5xx,
    /// the store stops (reads too, and `/healthz` says why), and after a restart the
    /// batch is not there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_answers_5xx_and_leaves_no_trace() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut config = HostConfig::new(manifest(dir.path())?);
        config.listen = "127.0.0.1:0".parse()?;
        config.admin_listen = "127.0.0.1:0".parse()?;
        config.data_dir = dir.path().to_path_buf();
        let backend = FailingFlush::new(store::SledStorage::open(dir.path())?);
        let fail = backend.fail.clone();
        let host = start_on(config, backend).await?;
        let url = |path: &str| format!("http://{}{path}", host.gateway_addr);

        assert_eq!(
            send("PUT", url("/kv/kept"), "1").await?.0,
            http::StatusCode::NO_CONTENT
        );
        assert_eq!(
            send("GET", url("/healthz"), "").await?,
            (http::StatusCode::OK, r#"{"status":"ok"}"#.to_string())
        );
        fail.store(true, Ordering::SeqCst);
        let (status, body) = send("PUT", url("/kv/lost"), "2").await?;
        assert!(status.is_server_error(), "{status} {body}");
        assert!(body.contains("flush"), "{body}");
        // Fail-stop: nothing is read back, not even what was durable before.
        for key in ["lost", "kept"] {
            let (status, body) = send("GET", url(&format!("/kv/{key}")), "").await?;
            assert!(status.is_server_error(), "{key}: {status} {body}");
            assert!(!body.contains('2'), "{body}");
        }
        let (status, body) = send("GET", url("/healthz"), "").await?;
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("injected"), "{body}");
        let admin = format!("http://{}/healthz", host.admin_addr);
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = http::Request::get(admin)
            .header("authorization", format!("Bearer {}", host.admin_token))
            .body(Full::new(Bytes::new()))?;
        assert_eq!(
            client.request(request).await?.status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        host.shutdown().await;

        // A restart from the files as they are (the halted store keeps its lock in this
        // process, as a crashed one would hold nothing: so restart from a copy).
        let copy = tempfile::tempdir()?;
        copy_dir(dir.path(), copy.path())?;
        let mut config = HostConfig::new(manifest(copy.path())?);
        config.listen = "127.0.0.1:0".parse()?;
        config.admin_listen = "127.0.0.1:0".parse()?;
        config.data_dir = copy.path().to_path_buf();
        let host = start(config).await?;
        let url = |path: &str| format!("http://{}{path}", host.gateway_addr);
        assert_eq!(
            send("GET", url("/kv/kept"), "").await?,
            (http::StatusCode::OK, "1".to_string())
        );
        assert_eq!(
            send("GET", url("/kv/lost"), "").await?.0,
            http::StatusCode::NOT_FOUND
        );
        host.shutdown().await;
        Ok(())
    }
}
