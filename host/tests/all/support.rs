//! Test harness: start a real host (the library, on ephemeral loopback ports) with real
//! components and a real sled directory, and talk to it over real HTTP.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use microhost::config::Manifest;
use microhost::{HostConfig, Running};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A built test component, by crate name (`test-echo` → `test_echo.wasm`).
pub(crate) fn wasm(crate_name: &str) -> PathBuf {
    let file = format!("{}.wasm", crate_name.replace('-', "_"));
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/target/wasm32-wasip2/release");
    let path = dir.join(&file);
    let fallback = dir.join(format!("{crate_name}.wasm"));
    if path.exists() {
        path
    } else if fallback.exists() {
        fallback
    } else {
        panic!("component {path:?} is missing: run `just build-components` first")
    }
}

/// One `[[service]]` of the test manifest.
#[derive(Clone)]
pub(crate) struct Svc {
    pub name: &'static str,
    pub route: &'static str,
    pub wasm: PathBuf,
    pub version: &'static str,
    pub memory_mib: u32,
    pub timeout_ms: u64,
    pub max_body_kib: u64,
    pub instance_reuse: u32,
    /// More `name = value` entries of the service's `limits` table.
    pub limits: Vec<String>,
    pub config: Vec<(&'static str, &'static str)>,
    pub publishes: Vec<&'static str>,
    /// (topic, max_deliver, backoff_ms)
    pub subscribe: Vec<(&'static str, u32, u64)>,
    /// More `key = value` lines of the service table (e.g. `health = { ... }`).
    pub extra: Vec<String>,
}

impl Svc {
    pub(crate) fn new(name: &'static str, route: &'static str, component: &str) -> Svc {
        Svc {
            name,
            route,
            wasm: wasm(component),
            version: "v1",
            memory_mib: 32,
            timeout_ms: 5_000,
            max_body_kib: 1024,
            instance_reuse: 1,
            limits: Vec::new(),
            config: Vec::new(),
            publishes: Vec::new(),
            subscribe: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Adds a `key = value` line to the service's table.
    pub(crate) fn set(mut self, line: &str) -> Svc {
        self.extra.push(line.to_string());
        self
    }

    /// Adds a `name = value` entry to the service's `limits` table.
    pub(crate) fn limit(mut self, entry: &str) -> Svc {
        self.limits.push(entry.to_string());
        self
    }

    pub(crate) fn publishes(mut self, topic: &'static str) -> Svc {
        self.publishes.push(topic);
        self
    }

    pub(crate) fn subscribe(
        mut self,
        topic: &'static str,
        max_deliver: u32,
        backoff_ms: u64,
    ) -> Svc {
        self.subscribe.push((topic, max_deliver, backoff_ms));
        self
    }

    pub(crate) fn timeout_ms(mut self, ms: u64) -> Svc {
        self.timeout_ms = ms;
        self
    }

    pub(crate) fn memory_mib(mut self, mib: u32) -> Svc {
        self.memory_mib = mib;
        self
    }

    pub(crate) fn max_body_kib(mut self, kib: u64) -> Svc {
        self.max_body_kib = kib;
        self
    }

    pub(crate) fn instance_reuse(mut self, n: u32) -> Svc {
        self.instance_reuse = n;
        self
    }

    pub(crate) fn config(mut self, key: &'static str, value: &'static str) -> Svc {
        self.config.push((key, value));
        self
    }
}

pub(crate) fn manifest_toml(services: &[Svc]) -> String {
    let mut toml = String::new();
    for s in services {
        toml.push_str(&format!(
            "[[service]]\nname = {:?}\nroute = {:?}\ncomponent = {{ path = {:?}, version = {:?} }}\n\
             limits = {{ memory_mib = {}, timeout_ms = {}, max_body_kib = {}, instance_reuse = {}{} }}\n",
            s.name,
            s.route,
            s.wasm.display().to_string(),
            s.version,
            s.memory_mib,
            s.timeout_ms,
            s.max_body_kib,
            s.instance_reuse,
            s.limits.iter().map(|l| format!(", {l}")).collect::<String>()
        ));
        for line in &s.extra {
            toml.push_str(line);
            toml.push('\n');
        }
        if !s.publishes.is_empty() {
            toml.push_str(&format!("publishes = {:?}\n", s.publishes));
        }
        if !s.config.is_empty() {
            toml.push_str("[service.config]\n");
            for (k, v) in &s.config {
                toml.push_str(&format!("{k} = {v:?}\n"));
            }
        }
        for (topic, max_deliver, backoff_ms) in &s.subscribe {
            toml.push_str(&format!(
                "[[service.subscribe]]\ntopic = {topic:?}\nmax_deliver = {max_deliver}\nbackoff_ms = {backoff_ms}\n"
            ));
        }
        toml.push('\n');
    }
    toml
}

/// A fresh data directory, removed when dropped.
pub(crate) fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("microhost-test-")
        .tempdir()
        .expect("creating a temp dir")
}

/// Test configuration: ephemeral ports, a shared precompiled-component cache (so tests
/// that start many hosts compile each component once), small pool, short timeouts.
pub(crate) fn config(services: &[Svc], data: &Path) -> anyhow::Result<HostConfig> {
    let path = data.join("microhost.toml");
    let manifest = Manifest::from_toml(&manifest_toml(services), &path, data.to_path_buf())?;
    let mut config = HostConfig::new(manifest);
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_listen = "127.0.0.1:0".parse()?;
    config.data_dir = data.to_path_buf();
    config.cache_dir = Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache"));
    config.max_instances = 64;
    config.limits.header_read_timeout = Duration::from_secs(1);
    config.limits.shutdown_grace = Duration::from_secs(10);
    Ok(config)
}

/// A running host and a client for it.
pub(crate) struct Host {
    pub running: Running,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `x-microhost-service`.
    pub(crate) fn served_by(&self) -> Option<&str> {
        self.header("x-microhost-service")
    }
}

/// A client that never reuses a connection idle for half a second: the test hosts
/// close idle keep-alive connections after their one-second header-read timeout, and a
/// request sent on one just as it closes fails.
pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(500))
        .build_http()
}

impl Host {
    pub(crate) async fn start(services: &[Svc], data: &Path) -> anyhow::Result<Host> {
        Host::start_with(config(services, data)?).await
    }

    pub(crate) async fn start_with(config: HostConfig) -> anyhow::Result<Host> {
        let running = microhost::start(config).await?;
        Ok(Host {
            running,
            client: client(),
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.gateway_addr)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        self.send(http::Method::GET, &self.url(path), Bytes::new(), None)
            .await
    }

    pub(crate) async fn post(&self, path: &str, body: impl Into<Bytes>) -> anyhow::Result<Resp> {
        self.send(http::Method::POST, &self.url(path), body.into(), None)
            .await
    }

    /// `GET` an admin path with the host's token; the answer as JSON.
    pub(crate) async fn admin_get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let token = self.running.admin_token.clone();
        let r = self
            .send(
                http::Method::GET,
                &self.admin_url(path),
                Bytes::new(),
                Some(&token),
            )
            .await?;
        anyhow::ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text());
        Ok(r.json())
    }

    /// `POST` to an admin path with the host's token.
    pub(crate) async fn admin_post(&self, path: &str) -> anyhow::Result<Resp> {
        let token = self.running.admin_token.clone();
        self.send(
            http::Method::POST,
            &self.admin_url(path),
            Bytes::new(),
            Some(&token),
        )
        .await
    }

    pub(crate) async fn put(&self, path: &str, body: impl Into<Bytes>) -> anyhow::Result<Resp> {
        self.send(http::Method::PUT, &self.url(path), body.into(), None)
            .await
    }

    /// Deploys `wasm` bytes to `service` through the admin API, with the host's token.
    pub(crate) async fn deploy(
        &self,
        service: &str,
        version: &str,
        wasm: Vec<u8>,
    ) -> anyhow::Result<Resp> {
        self.deploy_with(service, &format!("version={version}"), wasm)
            .await
    }

    /// Deploys with the query string `query` (`version=v2&canary=20`, ...).
    pub(crate) async fn deploy_with(
        &self,
        service: &str,
        query: &str,
        wasm: Vec<u8>,
    ) -> anyhow::Result<Resp> {
        let url = self.admin_url(&format!("/admin/services/{service}/versions?{query}"));
        let token = self.running.admin_token.clone();
        self.send(http::Method::POST, &url, wasm.into(), Some(&token))
            .await
    }

    pub(crate) async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Bytes,
        token: Option<&str>,
    ) -> anyhow::Result<Resp> {
        send(&self.client, method, url, body, token).await
    }

    /// A gateway request with extra headers.
    pub(crate) async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Resp> {
        let mut request = http::Request::builder().method(method).uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(
            self.client
                .request(request.body(Full::new(body.into()))?)
                .await?,
        )
        .await
    }

    /// Requests the active version of `service` has served (attempts included).
    pub(crate) async fn served(&self, service: &str) -> anyhow::Result<u64> {
        let status = self
            .admin_get(&format!("/admin/services/{service}"))
            .await?;
        status["active"]["served"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no served count in {status}"))
    }

    /// The `/metrics` text, with the admin token.
    pub(crate) async fn metrics(&self) -> anyhow::Result<String> {
        let token = self.running.admin_token.clone();
        let r = self
            .send(
                http::Method::GET,
                &self.admin_url("/metrics"),
                Bytes::new(),
                Some(&token),
            )
            .await?;
        anyhow::ensure!(r.status == 200, "GET /metrics: {} {}", r.status, r.text());
        Ok(r.text())
    }

    /// Runs the real `microhost` binary against this host's admin API (with its token).
    pub(crate) async fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_microhost"))
                .args(args)
                .arg("--admin")
                .arg(self.admin_url(""))
                .env("MICROHOST_ADMIN_TOKEN", &self.running.admin_token)
                .output()
                .await?,
        )
    }

    pub(crate) async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

pub(crate) async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: http::Method,
    url: &str,
    body: Bytes,
    token: Option<&str>,
) -> anyhow::Result<Resp> {
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    read(client.request(request.body(Full::new(body))?).await?).await
}

async fn read(response: http::Response<hyper::body::Incoming>) -> anyhow::Result<Resp> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Polls `check` until it returns true or `deadline` passes.
#[macro_export]
macro_rules! assert_eventually {
    ($deadline:expr, $check:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $deadline;
        loop {
            if $check {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// The sum of the samples named `name` whose labels include `labels`, from a `/metrics`
/// text (which must parse as Prometheus text).
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"));
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
