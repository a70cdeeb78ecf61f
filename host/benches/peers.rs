//! microhost against the peers, in one sitting on one machine (`just bench`).
//!
//! Servers, each its own process, all running at once and measured in alternation:
//! - `native`: a hyper hello-world server (this binary re-run with `--native-server`),
//!   the ceiling for any HTTP path here;
//! - `wasmtime-serve`: `wasmtime serve -Scli` 48.0.8 on `components/hello` (a plain
//!   `wasi:http/proxy` component);
//! - `microhost-hello`: `microhost serve --component` on the very same file;
//! - `microhost-kv-read` and `microhost-order`: the seed system (`registry/microhost.toml`),
//!   `GET /api/products/{id}` (a key-value read) and an authenticated `POST /api/orders`
//!   (a JWT check, calls to user and product, a write and an event, flushed).
//!
//! For each: single-connection latency (p50/p99 over sequential requests) and
//! throughput from 32 keep-alive connections, with RSS idle and at the end of the load.
//! Then: hot swaps under load (cached and uncached deploys, failed requests), cold start
//! of the seed system (uncached and cached), and the bus figures of `benches/bus.rs` if it
//! ran before. Writes `docs/benchmarks.json` and `docs/benchmarks.md`.
//!
//! The load generator is this binary: hyper 1 HTTP/1.1 client connections on the same
//! 2 cores as the servers (stated in the report).
//!
//! Usage: `just bench`, or `cargo bench -p microhost --bench peers -- [SECONDS] [ROUNDS]`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[path = "baseline/seed.rs"]
mod seed;

const CONNECTIONS: usize = 32;
const LATENCY_REQUESTS: usize = 2000;
const WASMTIME_VERSION: &str = "48.0.8";
/// Requests per instance in the opt-in reuse mode of both hosts.
const REUSE: u32 = 100;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn component(name: &str) -> PathBuf {
    root().join(format!(
        "components/target/wasm32-wasip2/release/{name}.wasm"
    ))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) the process has used, in µs (from `/proc/PID/stat`, in
/// clock ticks of 10 ms).
fn cpu_us(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The fields after the command name (which may hold spaces) in parentheses.
            let rest = s.rsplit_once(')')?.1.to_string();
            let fields: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            Some((fields.get(11)? + fields.get(12)?) * 10_000)
        })
        .unwrap_or(0)
}

/// What one measured request is.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
    method: http::Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    /// The status a successful request answers.
    ok: u16,
}

impl Target {
    /// `METHOD /path`, ids elided.
    fn label(&self) -> String {
        let path: Vec<&str> = self
            .path
            .split('/')
            .map(|s| if s.len() >= 16 { "{id}" } else { s })
            .collect();
        format!("{} {}", self.method, path.join("/"))
    }

    fn request(&self) -> http::Request<Full<Bytes>> {
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header(http::header::HOST, self.addr.to_string());
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.as_str());
        }
        builder
            .body(Full::new(self.body.clone()))
            .unwrap_or_else(|_| http::Request::new(Full::new(Bytes::new())))
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request on `sender`; the status, or an error.
async fn one(sender: &mut SendRequest<Full<Bytes>>, target: &Target) -> anyhow::Result<u16> {
    sender.ready().await?;
    let response = sender.send_request(target.request()).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// Sequential requests on one connection: latencies in µs, sorted.
async fn latency(target: &Target, n: usize) -> anyhow::Result<Vec<u64>> {
    let mut sender = connect(target.addr).await?;
    for _ in 0..n / 10 {
        one(&mut sender, target).await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = one(&mut sender, target).await?;
        anyhow::ensure!(status == target.ok, "{}: status {status}", target.name);
        samples.push(started.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    Ok(samples)
}

/// What a load run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    ok: u64,
    errors: u64,
    seconds: f64,
    peak_rss_kib: u64,
    /// The server's CPU time over the run, in µs.
    cpu_us: u64,
}

impl Load {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

/// `CONNECTIONS` keep-alive connections sending as fast as answers come, for `duration`.
async fn throughput(target: &Target, duration: Duration) -> anyhow::Result<Load> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (target, stop, ok, errors) = (target.clone(), stop.clone(), ok.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                if sender.is_none() {
                    sender = connect(target.addr).await.ok();
                }
                let Some(s) = sender.as_mut() else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                match one(s, &target).await {
                    Ok(status) if status == target.ok => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => errors.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        sender = None;
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let started = Instant::now();
    let cpu_before = cpu_us(target.pid);
    let mut peak = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(target.pid));
    }
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    for w in workers {
        w.await?;
    }
    Ok(Load {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds,
        peak_rss_kib: peak,
        cpu_us: cpu_us(target.pid).saturating_sub(cpu_before),
    })
}

/// A server process and its addresses.
struct Server {
    child: Child,
    gateway: SocketAddr,
    admin: Option<SocketAddr>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_until_listening(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the server exited with {status} before listening");
        }
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// This binary re-run as a native server (`--native-server`, or `--native-seed DIR`),
/// which prints its address.
async fn native(args: &[&std::ffi::OsStr]) -> anyhow::Result<Server> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let line = BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the native server printed no address"))?;
    Ok(Server {
        child,
        gateway: line.trim().parse()?,
        admin: None,
    })
}

/// The `wasmtime` binary of the pinned version: on PATH or in ~/.cargo/bin.
fn wasmtime_binary() -> anyhow::Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("wasmtime")];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/wasmtime"));
    }
    for candidate in candidates {
        if let Ok(output) = std::process::Command::new(&candidate)
            .arg("--version")
            .output()
            && String::from_utf8_lossy(&output.stdout).contains(WASMTIME_VERSION)
        {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "wasmtime {WASMTIME_VERSION} is not installed: `cargo install --locked wasmtime-cli \
         --version {WASMTIME_VERSION}` (`just bench` does it)"
    )
}

async fn wasmtime_serve(wasm: &Path, extra: &[&str]) -> anyhow::Result<Server> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut child = Command::new(wasmtime_binary()?)
        .args(["serve", "-Scli", "--addr", &addr.to_string()])
        .args(extra)
        .arg(wasm)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_until_listening(addr, &mut child).await?;
    Ok(Server {
        child,
        gateway: addr,
        admin: None,
    })
}

/// `microhost serve ARGS` on ephemeral ports, the access log off (wasmtime serve has
/// none); returns once it serves.
async fn microhost(args: &[&str], data: &Path, cache: &Path) -> anyhow::Result<Server> {
    microhost_logged(args, data, cache, false).await
}

/// As [`microhost`], with the access log as configured by default when `access_log`.
async fn microhost_logged(
    args: &[&str],
    data: &Path,
    cache: &Path,
    access_log: bool,
) -> anyhow::Result<Server> {
    let log = if access_log {
        "info,cranelift_codegen=warn,wasmtime=warn"
    } else {
        "info,microhost::access=off,cranelift_codegen=warn,wasmtime=warn"
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_microhost"))
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .arg("--cache-dir")
        .arg(cache)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", log)
        .env_remove("MICROHOST_ADMIN_TOKEN")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let field = |line: &str, name: &str| -> anyhow::Result<SocketAddr> {
        Ok(line
            .split(name)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .parse()?)
    };
    let mut early = Vec::new();
    let (gateway, admin) = loop {
        let Some(line) = lines.next_line().await? else {
            anyhow::bail!("microhost exited before serving: {early:#?}");
        };
        if line.contains("gateway_addr=") {
            break (field(&line, "gateway_addr=")?, field(&line, "admin_addr=")?);
        }
        early.push(line);
    };
    // Keep draining the log so the host never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child,
        gateway,
        admin: Some(admin),
    })
}

/// A request through a fresh connection (for setup and admin calls).
async fn call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&'static str, String)],
    body: impl Into<Bytes>,
) -> anyhow::Result<(u16, Bytes)> {
    let mut sender = connect(addr).await?;
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    let response = sender
        .send_request(builder.body(Full::new(body.into()))?)
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

fn json_field(body: &[u8], field: &str) -> anyhow::Result<String> {
    let value: Value = serde_json::from_slice(body)?;
    value[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no {field:?} in {value}"))
}

/// The seed's four services (`registry/microhost.toml` without the Python analytics
/// service, which the native baseline has no counterpart of), written into `dir`.
fn seed_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    let registry = root().join("registry");
    let mut manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(registry.join("microhost.toml"))?)?;
    let services = manifest
        .get_mut("service")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| anyhow::anyhow!("registry/microhost.toml has no [[service]]"))?;
    services.retain(|s| s.get("name").and_then(toml::Value::as_str) != Some("analytics"));
    for service in services.iter_mut() {
        if let Some(path) = service.get_mut("component").and_then(|c| c.get_mut("path")) {
            let absolute = registry.join(path.as_str().unwrap_or_default());
            *path = toml::Value::String(absolute.display().to_string());
        }
    }
    let out = dir.join("seed.toml");
    std::fs::write(&out, toml::to_string(&manifest)?)?;
    Ok(out)
}

/// A publisher and a subscriber (`benches/bus.rs`'s pair), written into `dir`.
fn bus_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("bus.toml");
    std::fs::write(
        &out,
        format!(
            "[[service]]\nname = \"pub\"\nroute = \"/pub\"\ncomponent = {{ path = {:?}, version = \"bench\" }}\npublishes = [\"bench.events\"]\n\n\
             [[service]]\nname = \"sub\"\nroute = \"/sub\"\ncomponent = {{ path = {:?}, version = \"bench\" }}\nconfig = {{ record_order = \"false\" }}\n\
             [[service.subscribe]]\ntopic = \"bench.events\"\n",
            component("test_publish").display().to_string(),
            component("test_subscriber").display().to_string(),
        ),
    )?;
    Ok(out)
}

/// A durable publish (`POST /pub/pub/bench.events`: a key-value write and an event).
fn publish_target(name: &'static str, server: &Server) -> Target {
    Target {
        name,
        addr: server.gateway,
        pid: server.pid(),
        method: http::Method::POST,
        path: "/pub/pub/bench.events".to_string(),
        headers: Vec::new(),
        body: Bytes::from_static(b"b"),
        ok: 201,
    }
}

/// The seed system with a user, a token and a product with plenty of stock; the
/// targets are named `names` (key-value read, order).
async fn seed_targets(
    server: &Server,
    names: (&'static str, &'static str),
) -> anyhow::Result<(Target, Target)> {
    let addr = server.gateway;
    let json = || vec![("content-type", "application/json".to_string())];
    let (status, body) = call(
        addr,
        http::Method::POST,
        "/api/users/register",
        &json(),
        r#"{"email":"bench@example.com","password":"correct horse","name":"Bench"}"#,
    )
    .await?;
    anyhow::ensure!(
        status == 201,
        "register: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let (status, body) = call(
        addr,
        http::Method::POST,
        "/api/users/login",
        &json(),
        r#"{"email":"bench@example.com","password":"correct horse"}"#,
    )
    .await?;
    anyhow::ensure!(status == 200, "login: {status}");
    let token = json_field(&body, "token")?;
    let auth = vec![
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_string()),
    ];
    let (status, body) = call(
        addr,
        http::Method::POST,
        "/api/products",
        &auth,
        r#"{"name":"Lamp","price_cents":1999,"stock":1000000000}"#,
    )
    .await?;
    anyhow::ensure!(
        status == 201,
        "product: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let product = json_field(&body, "id")?;
    let read = Target {
        name: names.0,
        addr,
        pid: server.pid(),
        method: http::Method::GET,
        path: format!("/api/products/{product}"),
        headers: Vec::new(),
        body: Bytes::new(),
        ok: 200,
    };
    let order = Target {
        name: names.1,
        addr,
        pid: server.pid(),
        method: http::Method::POST,
        path: "/api/orders".to_string(),
        headers: auth,
        body: Bytes::from(format!(
            r#"{{"items":[{{"product_id":"{product}","quantity":1}}]}}"#
        )),
        ok: 201,
    };
    Ok((read, order))
}

fn hello_target(name: &'static str, server: &Server) -> Target {
    Target {
        name,
        addr: server.gateway,
        pid: server.pid(),
        method: http::Method::GET,
        path: "/".to_string(),
        headers: Vec::new(),
        body: Bytes::new(),
        ok: 200,
    }
}

/// For a durable flow, the rate its work settles at: after the load of `requests`, one
/// more request whose asynchronous effect is polled for (an order `confirmed`, an event
/// handled by the subscriber); delivery is in order, so everything before it settled
/// too. `None` for a target without asynchronous effects.
async fn settled(
    target: &Target,
    load_started: Instant,
    requests: u64,
) -> anyhow::Result<Option<f64>> {
    let post = |body: Bytes| {
        call(
            target.addr,
            http::Method::POST,
            &target.path,
            &target.headers,
            body,
        )
    };
    let (poll, confirmed) = if target.path == "/api/orders" {
        let (status, body) = post(target.body.clone()).await?;
        anyhow::ensure!(status == 201, "{}: marker order {status}", target.name);
        (format!("/api/orders/{}", json_field(&body, "id")?), true)
    } else if target.path.starts_with("/pub/pub/") {
        let marker = format!("marker{}", load_started.elapsed().as_nanos());
        let (status, _) = post(Bytes::from(marker.clone())).await?;
        anyhow::ensure!(status == 201, "{}: marker event {status}", target.name);
        (format!("/sub/latency/{marker}"), false)
    } else {
        return Ok(None);
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (status, body) = call(
            target.addr,
            http::Method::GET,
            &poll,
            &target.headers,
            Bytes::new(),
        )
        .await?;
        if status == 200 && (!confirmed || json_field(&body, "status")? == "confirmed") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: {poll} never settled",
            target.name
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Some(
        (requests + 1) as f64 / load_started.elapsed().as_secs_f64(),
    ))
}

/// Latency and throughput of each target, `rounds` times in alternation; medians.
async fn measure(targets: &[Target], rounds: usize, seconds: u64) -> anyhow::Result<Value> {
    let mut p50: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut p99 = p50.clone();
    let mut rps = p50.clone();
    let mut cpu = p50.clone();
    let mut settle = p50.clone();
    let mut errors = vec![0u64; targets.len()];
    let mut peak = vec![0u64; targets.len()];
    let idle: Vec<u64> = targets.iter().map(|t| rss_kib(t.pid)).collect();
    for round in 0..rounds {
        for (i, target) in targets.iter().enumerate() {
            let samples = latency(target, LATENCY_REQUESTS).await?;
            p50[i].push(percentile(&samples, 50.0) as f64);
            p99[i].push(percentile(&samples, 99.0) as f64);
            let load_started = Instant::now();
            let load = throughput(target, Duration::from_secs(seconds)).await?;
            rps[i].push(load.rps());
            cpu[i].push(load.cpu_us as f64 / load.ok.max(1) as f64);
            if let Some(rate) = settled(target, load_started, load.ok).await? {
                settle[i].push(rate);
            }
            errors[i] += load.errors;
            peak[i] = peak[i].max(load.peak_rss_kib);
            eprintln!(
                "round {round}: {:<18} p50 {:>6} µs  p99 {:>6} µs  {:>8.0} req/s  {} errors",
                target.name,
                percentile(&samples, 50.0),
                percentile(&samples, 99.0),
                load.rps(),
                load.errors
            );
        }
    }
    let mut out = serde_json::Map::new();
    for (i, target) in targets.iter().enumerate() {
        out.insert(
            target.name.to_string(),
            json!({
                "request": target.label(),
                "p50_us": median(p50[i].clone()),
                "p99_us": median(p99[i].clone()),
                "rps": median(rps[i].clone()).round(),
                "rps_rounds": rps[i].iter().map(|r| r.round()).collect::<Vec<_>>(),
                "cpu_us_per_request": median(cpu[i].clone()).round(),
                "settled_per_sec": if settle[i].is_empty() { Value::Null } else { json!(median(settle[i].clone()).round()) },
                "errors": errors[i],
                "rss_idle_kib": idle[i],
                "rss_load_kib": peak[i],
            }),
        );
    }
    Ok(Value::Object(out))
}

async fn admin_token(data: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    let token = std::fs::read_to_string(data.join(microhost::ADMIN_TOKEN_FILE))?;
    Ok(vec![("authorization", format!("Bearer {}", token.trim()))])
}

/// Swaps under 32-connection load: cached (known versions, alternating deploy and
/// rollback) and uncached (components this host never compiled).
async fn hot_swap(seconds: u64) -> anyhow::Result<Value> {
    let data = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let server = microhost(
        &["--component", &component("hello").display().to_string()],
        data.path(),
        cache.path(),
    )
    .await?;
    let admin = server
        .admin
        .ok_or_else(|| anyhow::anyhow!("no admin address"))?;
    let auth = admin_token(data.path()).await?;
    let target = hello_target("microhost-hello", &server);
    let load = tokio::spawn({
        let target = target.clone();
        async move { throughput(&target, Duration::from_secs(seconds)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hello = Bytes::from(std::fs::read(component("hello"))?);
    let mut cached = Vec::new();
    let started = Instant::now();
    let mut swaps = 0;
    while started.elapsed() < Duration::from_secs(seconds.saturating_sub(2).max(1)) && swaps < 100 {
        let t = Instant::now();
        let (status, body) = if swaps % 2 == 0 {
            call(
                admin,
                http::Method::POST,
                "/admin/services/app/versions?version=v2",
                &auth,
                hello.clone(),
            )
            .await?
        } else {
            call(
                admin,
                http::Method::POST,
                "/admin/services/app/rollback",
                &auth,
                Bytes::new(),
            )
            .await?
        };
        anyhow::ensure!(
            status < 300,
            "swap {swaps}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        cached.push(t.elapsed().as_micros() as u64);
        swaps += 1;
    }
    let mut uncached = Vec::new();
    for (i, name) in ["test_echo", "test_health"].iter().enumerate() {
        let wasm = Bytes::from(std::fs::read(component(name))?);
        let t = Instant::now();
        let (status, body) = call(
            admin,
            http::Method::POST,
            &format!("/admin/services/app/versions?version=u{i}"),
            &auth,
            wasm,
        )
        .await?;
        anyhow::ensure!(
            status == 201,
            "uncached swap: {status} {}",
            String::from_utf8_lossy(&body)
        );
        anyhow::ensure!(
            serde_json::from_slice::<Value>(&body)?["from_cache"] == false,
            "{name} was already compiled"
        );
        uncached.push(t.elapsed().as_micros() as u64);
    }
    let load = load.await??;
    cached.sort_unstable();
    Ok(json!({
        "cached_swaps": cached.len(),
        "cached_swap_p50_ms": percentile(&cached, 50.0) as f64 / 1000.0,
        "cached_swap_p99_ms": percentile(&cached, 99.0) as f64 / 1000.0,
        "uncached_swap_ms": uncached.iter().map(|u| *u as f64 / 1000.0).collect::<Vec<_>>(),
        "requests_during_swaps": load.ok + load.errors,
        "failed_requests": load.errors,
        "rps_during_swaps": load.rps().round(),
    }))
}

/// Process start to the first 200 of the seed system, with an empty cache and then with
/// the cache the first start filled.
/// The same hello route in each guest language: the Rust `hello` component, and the
/// `/hello` route of test-py and test-js (a JSON answer with a config lookup, through
/// their helpers). Size, first start (compiling, empty cache), a start from the cache,
/// then latency, throughput and RSS with a fresh instance per request.
async fn languages(rounds: usize, seconds: u64) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for (language, name, path) in [
        ("rust", "hello", "/"),
        ("python", "test_py", "/hello"),
        ("javascript", "test_js", "/hello"),
    ] {
        let wasm = component(name);
        let size = std::fs::metadata(&wasm)?.len();
        let data = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        let args = ["--component", &wasm.display().to_string()];
        let mut starts = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            let mut server = microhost(&args, data.path(), cache.path()).await?;
            starts.push(started.elapsed().as_secs_f64() * 1000.0);
            server.child.start_kill()?;
            server.child.wait().await?;
        }
        let server = microhost(&args, data.path(), cache.path()).await?;
        let mut target = hello_target(language, &server);
        target.path = path.to_string();
        let measured = measure(&[target], rounds, seconds).await?;
        let mut figures = measured[language].clone();
        figures["component_bytes"] = json!(size);
        figures["first_start_ms"] = json!(starts[0].round());
        figures["cached_start_ms"] = json!(starts[1].round());
        out.insert(language.to_string(), figures);
    }
    Ok(Value::Object(out))
}

/// Instructions the server executes per hello request (callgrind: a count, repeatable
/// where wall time is not), for `native`, `wasmtime serve` and microhost: each started
/// under `valgrind --tool=callgrind`, warmed up, then counted over `requests` keep-alive
/// requests (counters zeroed before, dumped after). `Null` when valgrind is missing.
async fn instructions(requests: usize) -> anyhow::Result<Value> {
    if std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("valgrind is not installed: no instruction counts");
        return Ok(Value::Null);
    }
    let hello = component("hello");
    let wasmtime = wasmtime_binary()?;
    let mut out = serde_json::Map::new();
    for name in ["native", "wasmtime-serve", "microhost-hello"] {
        let dir = tempfile::tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut command = Command::new("valgrind");
        command.arg("--tool=callgrind").arg(format!(
            "--callgrind-out-file={}/cg.out",
            dir.path().display()
        ));
        match name {
            "native" => command.arg(std::env::current_exe()?).args([
                "--native-server",
                "--addr",
                &addr.to_string(),
            ]),
            "wasmtime-serve" => command
                .arg(&wasmtime)
                .args(["serve", "-Scli", "--addr", &addr.to_string()])
                .arg(&hello),
            _ => command
                .arg(env!("CARGO_BIN_EXE_microhost"))
                .args(["serve", "--component"])
                .arg(&hello)
                .args([
                    "--listen",
                    &addr.to_string(),
                    "--admin-listen",
                    "127.0.0.1:0",
                ])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                // The pool's address-space reservation must fit valgrind's.
                .args(["--max-instances", "4"])
                .env("RUST_LOG", "warn,microhost::access=off"),
        };
        let mut child = command
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        wait_until_listening(addr, &mut child).await?;
        let pid = child.id().unwrap_or(0).to_string();
        let target = Target {
            name: "instructions",
            addr,
            pid: 0,
            method: http::Method::GET,
            path: "/".into(),
            headers: Vec::new(),
            body: Bytes::new(),
            ok: 200,
        };
        let mut sender = connect(addr).await?;
        for _ in 0..requests / 5 {
            one(&mut sender, &target).await?;
        }
        let control = |what: &str| {
            std::process::Command::new("callgrind_control")
                .args([what, &pid])
                .output()
        };
        control("-z")?;
        for _ in 0..requests {
            anyhow::ensure!(one(&mut sender, &target).await? == 200, "{name}: not a 200");
        }
        control("-d")?;
        child.start_kill()?;
        child.wait().await?;
        // The dump after the zeroing is `cg.out.1`; its `summary:` line is the total.
        let dump = std::fs::read_to_string(dir.path().join("cg.out.1"))?;
        let total: f64 = dump
            .lines()
            .find_map(|l| l.strip_prefix("summary:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{name}: no summary in the callgrind dump"))?;
        eprintln!(
            "{name}: {:.0} instructions per request",
            total / requests as f64
        );
        out.insert(name.to_string(), json!((total / requests as f64).round()));
    }
    out.insert("requests".into(), json!(requests));
    Ok(Value::Object(out))
}

async fn cold_start() -> anyhow::Result<Value> {
    let manifest = root().join("registry/microhost.toml");
    let data = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let mut times = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let mut server = microhost(
            &["--manifest", &manifest.display().to_string()],
            data.path(),
            cache.path(),
        )
        .await?;
        loop {
            if let Ok((200, _)) = call(
                server.gateway,
                http::Method::GET,
                "/api/products",
                &[],
                Bytes::new(),
            )
            .await
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        server.child.start_kill()?;
        server.child.wait().await?;
    }
    Ok(json!({
        "services": 4,
        "uncached_ms": times[0],
        "cached_ms": median(times[1..].to_vec()),
    }))
}

fn native_server() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let addr = std::env::args()
            .skip_while(|a| a != "--addr")
            .nth(1)
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let mut response =
                        http::Response::new(Full::new(Bytes::from_static(b"Hello, world!\n")));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({ "cpus": cpus, "cpu": model, "kernel": kernel.trim(), "rustc": rustc })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        (a / b * 100.0).round() / 100.0
    }
}

fn markdown(report: &Value) -> String {
    let t = &report["throughput_latency"];
    let row = |name: &str| {
        let r = &t[name];
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["request"].as_str().unwrap_or(""),
            r["p50_us"].as_f64().unwrap_or(0.0).round(),
            r["p99_us"].as_f64().unwrap_or(0.0).round(),
            r["rps"].as_f64().unwrap_or(0.0).round(),
            r["cpu_us_per_request"],
            r["errors"],
            r["rss_idle_kib"].as_u64().unwrap_or(0) / 1024,
            r["rss_load_kib"].as_u64().unwrap_or(0) / 1024,
        )
    };
    let ratios = &report["ratios"];
    let swap = &report["hot_swap"];
    let cold = &report["cold_start"];
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(&format!(
        "Generated by `just bench` on {} ({} × {}, {}, {}). Every server ran at once on \
         this machine and was measured in alternation, {} rounds; figures are medians of \
         the rounds. The load generator is `host/benches/peers.rs` (hyper 1 HTTP/1.1 \
         keep-alive connections) on the same cores: single-connection latency over {} \
         sequential requests, throughput from {} connections for {} s. microhost ran with \
         its access log off (`wasmtime serve` has none); every server ran without \
         `RUST_BACKTRACE` (with it set, wasmtime captures a backtrace for an internal \
         error on every instance teardown). Release builds. The JSON is \
         [benchmarks.json](benchmarks.json).\n\n",
        report["date"].as_str().unwrap_or(""),
        report["machine"]["cpus"],
        report["machine"]["cpu"].as_str().unwrap_or(""),
        report["machine"]["kernel"].as_str().unwrap_or(""),
        report["machine"]["rustc"].as_str().unwrap_or(""),
        report["settings"]["rounds"],
        LATENCY_REQUESTS,
        CONNECTIONS,
        report["settings"]["seconds"],
    ));
    md.push_str("## HTTP path\n\nCPU µs/req is the server process's own CPU time (user + system, from `/proc/PID/stat`) over the 32-connection run, divided by its requests: a figure the load generator sharing the cores cannot inflate.\n\n| server | request | p50 µs | p99 µs | req/s (32 conn) | CPU µs/req | errors | RSS idle MiB | RSS load MiB |\n|---|---|---|---|---|---|---|---|---|\n");
    for name in [
        "native",
        "wasmtime-serve",
        "microhost-hello",
        "microhost-hello-logged",
        "native-kv-read",
        "microhost-kv-read",
        "native-order",
        "microhost-order",
        "native-publish",
        "microhost-publish",
        "wasmtime-serve-reuse",
        "microhost-hello-reuse",
    ] {
        md.push_str(&row(name));
    }
    md.push_str(&format!(
        "\n`hello` is one file, `components/hello` (`wasi:http/proxy`), served by `wasmtime \
         serve -Scli` and by `microhost serve --component`; each request gets a fresh \
         instance on both.\n\n\
         | ratio (hello route) | achieved | target |\n|---|---|---|\n\
         | microhost ÷ wasmtime serve, throughput | {} | ≥ 3 |\n\
         | microhost ÷ native hyper, throughput | {} | ≥ 0.30 |\n\
         | microhost p50 ÷ wasmtime serve p50 | {} | ≤ 1 |\n\n\
         With instance reuse (opt-in, `limits.instance_reuse = {REUSE}`; `wasmtime serve \
         --max-instance-reuse-count {REUSE}`): an instance serves up to {REUSE} requests in \
         turn, so a request can see memory an earlier request left (each request's \
         effects stay its own, and a failed instance is dropped). microhost-reuse ÷ \
         wasmtime serve (default): {}; ÷ wasmtime serve with the same reuse: {}; ÷ native: \
         {}.\n\n",
        ratios["hello_rps_vs_wasmtime"],
        ratios["hello_rps_vs_native"],
        ratios["hello_p50_vs_wasmtime"],
        ratios["reuse_rps_vs_wasmtime"],
        ratios["reuse_rps_vs_wasmtime_reuse"],
        ratios["reuse_rps_vs_native"],
    ));
    let base = &report["baseline"];
    let settled = |name: &str| t[name]["settled_per_sec"].as_f64().unwrap_or(0.0).round();
    md.push_str(&format!(
        "`microhost-hello-logged` is the same host with its access log on, as by default: \
         CPU per request {} × the host without it, throughput {} ×.\n\n\
         ## The durable path against the native baseline\n\n\
         `native-*` is `host/benches/baseline/seed.rs`: the seed's user, product, order and \
         notification logic (and the bus benchmark's publisher and subscriber) as plain Rust \
         handlers in one process on the host's own store, group commit, unit of work, event \
         log, cursors and token code (cargo feature `bench`), with the same keys, JSON, \
         events and argon2/JWT settings, one delivery at a time per subscription committed \
         durably with its cursor. It is this design's limit on this machine. microhost runs \
         the seed's four services (`registry/microhost.toml` without analytics, which the \
         baseline has no counterpart of) and, for publishes, `benches/bus.rs`'s publisher and \
         subscriber. Settled/s: requests per second from the start of the load until the \
         last one's asynchronous work is done (an order `confirmed`; an event handled).\n\n\
         | flow | native | microhost | ratio | target |\n|---|---|---|---|---|\n\
         | kv read, req/s | {} | {} | {} | |\n\
         | order, 201/s | {} | {} | {} | |\n\
         | order flow, 201 to `confirmed`, orders/s | {} | {} | {} | ≥ 0.5 |\n\
         | durable publishes/s | {} | {} | {} | |\n\
         | events end to end/s | {} | {} | {} | |\n\n\
         Durable publishes ÷ the hello route's req/s: {} (target ≥ 0.7); the order flow ÷ \
         hello: {}.\n\n",
        ratios["access_log_cpu_vs_off"],
        ratios["access_log_rps_vs_off"],
        t["native-kv-read"]["rps"],
        t["microhost-kv-read"]["rps"],
        base["kv_read_rps_vs_native"],
        t["native-order"]["rps"],
        t["microhost-order"]["rps"],
        base["order_201_vs_native"],
        settled("native-order"),
        settled("microhost-order"),
        base["order_flow_vs_native"],
        t["native-publish"]["rps"],
        t["microhost-publish"]["rps"],
        base["publish_rps_vs_native"],
        settled("native-publish"),
        settled("microhost-publish"),
        base["events_end_to_end_vs_native"],
        base["publish_rps_vs_hello"],
        base["order_flow_vs_hello"],
    ));
    let ins = &report["instructions_per_request"];
    if ins.is_object() {
        md.push_str(&format!(
            "## Instructions per hello request\n\nCounted by callgrind (valgrind) in the \
             server process over {} keep-alive `GET /` requests after a warm-up, counters \
             zeroed between (a count, repeatable where wall time on these machines is not; \
             microhost with `--max-instances 4` so that its pool fits valgrind's address \
             space):\n\n| server | instructions/request | ÷ native |\n|---|---|---|\n\
             | native | {} | 1 |\n| wasmtime-serve | {} | {:.1} |\n| microhost-hello | {} | {:.1} |\n\n\
             microhost ÷ wasmtime serve: {}.\n\n",
            ins["requests"],
            ins["native"],
            ins["wasmtime-serve"],
            ins["wasmtime-serve"].as_f64().unwrap_or(0.0) / ins["native"].as_f64().unwrap_or(1.0),
            ins["microhost-hello"],
            ins["microhost-hello"].as_f64().unwrap_or(0.0) / ins["native"].as_f64().unwrap_or(1.0),
            ratio(ins["microhost-hello"].as_f64().unwrap_or(0.0), ins["wasmtime-serve"].as_f64().unwrap_or(0.0)),
        ));
    }
    md.push_str(&format!(
        "## Hot swap under load\n\n{} swaps (deploy of a known version, then rollback, \
         alternating) while {} connections sent requests: swap latency p50 {} ms, p99 {} ms; \
         {} requests, {} failed. Deploys of components this host had never compiled \
         (uncached, compiled on the spot): {} ms.\n\n",
        swap["cached_swaps"],
        CONNECTIONS,
        swap["cached_swap_p50_ms"],
        swap["cached_swap_p99_ms"],
        swap["requests_during_swaps"],
        swap["failed_requests"],
        swap["uncached_swap_ms"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|ms| format!("{:.0}", ms.as_f64().unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join(" and "),
    ));
    md.push_str(&format!(
        "## Cold start\n\nProcess start to the first 200 of the seed system ({} services): \
         {:.0} ms with an empty precompiled cache, {:.0} ms with the cache filled (median of \
         3 restarts).\n\n",
        cold["services"],
        cold["uncached_ms"].as_f64().unwrap_or(0.0),
        cold["cached_ms"].as_f64().unwrap_or(0.0),
    ));
    let languages = &report["languages"];
    md.push_str(&format!(
        "## Guest languages\n\nThe same kind of route in each language, served by `microhost \
         serve --component` with a fresh instance per request: Rust `components/hello`, and \
         the `/hello` route of `components/test-py` (componentize-py 0.25.1) and \
         `components/test-js` (componentize-js 0.23.0), which answer JSON through their \
         helpers. First start: process start to serving with an empty precompiled cache \
         (compiling the component); cached: the same with the cache filled. Measured on \
         {}.\n\n\
         | language | component MB | first start ms | cached start ms | p50 µs | req/s (32 conn) | errors | RSS idle MiB | RSS load MiB |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        languages["date"].as_str().unwrap_or("-"),
    ));
    for language in ["rust", "python", "javascript"] {
        let l = &languages[language];
        md.push_str(&format!(
            "| {language} | {:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
            l["component_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            l["first_start_ms"],
            l["cached_start_ms"],
            l["p50_us"].as_f64().unwrap_or(0.0).round(),
            l["rps"].as_f64().unwrap_or(0.0).round(),
            l["errors"],
            l["rss_idle_kib"].as_u64().unwrap_or(0) / 1024,
            l["rss_load_kib"].as_u64().unwrap_or(0) / 1024,
        ));
    }
    md.push('\n');
    let bus = &report["bus"];
    if bus.is_object() {
        md.push_str(&format!(
            "## Event bus\n\nFrom `host/benches/bus.rs` (in-process, this run): {} durable \
             publishes/s from {} clients; {} events/s handled end to end by one subscription \
             (fresh instance per delivery, committed and flushed with its cursor); unloaded \
             publish → handle latency p50 {} ms, p99 {} ms; under the {}-event burst p50 {} \
             ms (queueing).\n\n",
            bus["publish_per_sec"].as_f64().unwrap_or(0.0).round(),
            bus["clients"],
            bus["end_to_end_per_sec"].as_f64().unwrap_or(0.0).round(),
            bus["latency_p50_ms"],
            bus["latency_p99_ms"],
            bus["events"],
            bus["saturated_latency_p50_ms"]
                .as_f64()
                .unwrap_or(0.0)
                .round(),
        ));
    }
    md.push_str(
        "## Where the time goes, and what was changed\n\n\
         Profiled with `perf record --call-graph dwarf` on the release host serving \
         `hello` under the 32-connection load (2026-11-26, same machine). Before the \
         changes microhost and `wasmtime serve` were even (about 7,100 req/s each):\n\n\
         - A fifth of the host's time went to resetting pool slots: `madvise` of each \
         freed linear memory, the TLB shootdowns (IPIs) it causes, and a page fault per \
         touched page in the next instance. Keeping 2 MiB per memory resident and \
         resetting only the dirty pages in place (`PAGEMAP_SCAN`, batched decommits): \
         7,030 → 9,080 req/s.\n\
         - With `RUST_BACKTRACE=1` in the environment (as on this machine), wasmtime \
         captured a backtrace for an internal error on every store teardown (15 % of the \
         samples); the benchmark runs every server without it: 9,080 → 10,640 req/s \
         (`wasmtime serve`: 6,430 → 6,970).\n\
         - The component-model-async machinery (a task and a queued call around every \
         guest call) is not needed by WASIp2 guests: `concurrency_support(false)`: \
         10,640 → 14,700 req/s.\n\n\
         What remains per request, fresh instance included, is about half the gateway's \
         time: instantiation (imports, module registration, pool slot) and teardown \
         (slot reset), store and WASI context creation; the other half is HTTP and the \
         kernel's TCP path, as for the native server. The instance lifecycle now costs \
         microhost between a quarter and a third of what it costs `wasmtime serve` \
         (compare each host with and without reuse), but the HTTP-and-call path both \
         share bounds a fresh-instance host to about twice `wasmtime serve` here; about \
         3× (2.9 and 3.0 in two runs) takes instance reuse.\n\n",
    );
    md.push_str(
        "## Reproduce\n\n`just bench` (installs `wasmtime-cli` 48.0.8 with `cargo install \
         --locked` if it is missing, builds in release, runs `benches/bus.rs` then \
         `benches/peers.rs`, and rewrites this file and the JSON). `cargo bench -p \
         microhost --bench peers -- SECONDS ROUNDS` changes the load duration and the \
         number of rounds.\n",
    );
    md
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--native-server") {
        return native_server();
    }
    if let Some(dir) = std::env::args().skip_while(|a| a != "--native-seed").nth(1) {
        return seed::serve(Path::new(&dir));
    }
    // `--load ADDR SECONDS`: only the 32-connection load on `GET /` (for profiling a
    // server started by hand).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--load") {
        let addr: SocketAddr = args
            .get(i + 1)
            .map(|a| a.parse())
            .transpose()?
            .ok_or_else(|| anyhow::anyhow!("--load ADDR SECONDS"))?;
        let seconds: u64 = args.get(i + 2).and_then(|s| s.parse().ok()).unwrap_or(10);
        let target = Target {
            name: "load",
            addr,
            pid: 0,
            method: http::Method::GET,
            path: "/".into(),
            headers: Vec::new(),
            body: Bytes::new(),
            ok: 200,
        };
        let load = tokio::runtime::Runtime::new()?
            .block_on(throughput(&target, Duration::from_secs(seconds)))?;
        println!("{:.0} req/s, {} errors", load.rps(), load.errors);
        return Ok(());
    }
    let numbers: Vec<u64> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    let seconds = numbers.first().copied().unwrap_or(5);
    let rounds = numbers.get(1).copied().unwrap_or(3) as usize;
    let runtime = tokio::runtime::Runtime::new()?;
    if std::env::args().any(|a| a == "--instructions") {
        // Only the instruction counts, merged into the last full report.
        return runtime.block_on(async move {
            let docs = root().join("docs");
            let mut report: Value =
                serde_json::from_slice(&std::fs::read(docs.join("benchmarks.json"))?)?;
            report["instructions_per_request"] = instructions(1000).await?;
            std::fs::write(
                docs.join("benchmarks.json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            std::fs::write(docs.join("benchmarks.md"), markdown(&report))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report["instructions_per_request"])?
            );
            Ok(())
        });
    }
    if std::env::args().any(|a| a == "--languages") {
        // Only the guest-language figures, merged into the last full report (`just
        // bench-languages`: no wasmtime CLI needed).
        return runtime.block_on(async move {
            let docs = root().join("docs");
            let mut report: Value =
                serde_json::from_slice(&std::fs::read(docs.join("benchmarks.json"))?)?;
            report["languages"] = languages(rounds, seconds).await?;
            report["languages"]["date"] =
                json!(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
            std::fs::write(
                docs.join("benchmarks.json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            std::fs::write(docs.join("benchmarks.md"), markdown(&report))?;
            println!("{}", serde_json::to_string_pretty(&report["languages"])?);
            Ok(())
        });
    }
    runtime.block_on(async move {
        let hello = component("hello");
        let data = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        let seed_data = tempfile::tempdir()?;
        let baseline_data = tempfile::tempdir()?;
        let baseline = native(&["--native-seed".as_ref(), baseline_data.path().as_os_str()]).await?;
        let native = native(&["--native-server".as_ref()]).await?;
        let wasmtime = wasmtime_serve(&hello, &[]).await?;
        let reuse = REUSE.to_string();
        let wasmtime_reuse = wasmtime_serve(&hello, &["--max-instance-reuse-count", &reuse]).await?;
        let mh = microhost(&["--component", &hello.display().to_string()], data.path(), cache.path()).await?;
        let reuse_data = tempfile::tempdir()?;
        let reuse_manifest = reuse_data.path().join("reuse.toml");
        std::fs::write(
            &reuse_manifest,
            format!(
                "[[service]]\nname = \"app\"\nroute = \"/\"\ncomponent = {{ path = {:?}, version = \"local\" }}\nlimits = {{ instance_reuse = {REUSE} }}\n",
                hello.display().to_string()
            ),
        )?;
        let mh_reuse = microhost(&["--manifest", &reuse_manifest.display().to_string()], reuse_data.path(), cache.path()).await?;
        let manifest = seed_manifest(seed_data.path())?;
        let seed = microhost(&["--manifest", &manifest.display().to_string()], seed_data.path(), cache.path()).await?;
        let (read, order) = seed_targets(&seed, ("microhost-kv-read", "microhost-order")).await?;
        let (native_read, native_order) = seed_targets(&baseline, ("native-kv-read", "native-order")).await?;
        let bus_data = tempfile::tempdir()?;
        let bus_toml = bus_manifest(bus_data.path())?;
        let bus_host = microhost(&["--manifest", &bus_toml.display().to_string()], bus_data.path(), cache.path()).await?;
        let logged_data = tempfile::tempdir()?;
        let logged = microhost_logged(&["--component", &hello.display().to_string()], logged_data.path(), cache.path(), true).await?;
        let targets = [
            hello_target("native", &native),
            hello_target("wasmtime-serve", &wasmtime),
            hello_target("microhost-hello", &mh),
            hello_target("microhost-hello-logged", &logged),
            native_read,
            read,
            native_order,
            order,
            publish_target("native-publish", &baseline),
            publish_target("microhost-publish", &bus_host),
            hello_target("wasmtime-serve-reuse", &wasmtime_reuse),
            hello_target("microhost-hello-reuse", &mh_reuse),
        ];
        let measured = measure(&targets, rounds, seconds).await?;
        drop((native, wasmtime, wasmtime_reuse, mh, mh_reuse, seed, baseline, bus_host, logged));
        let swap = hot_swap(seconds.max(5)).await?;
        let cold = cold_start().await?;
        let instructions = instructions(1000).await?;
        let mut languages = languages(rounds, seconds).await?;
        languages["date"] = json!(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
        let bus: Value = std::fs::read(root().join("target/bench/bus.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let f = |name: &str, field: &str| measured[name][field].as_f64().unwrap_or(0.0);
        let report = json!({
            "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "machine": machine(),
            "settings": { "seconds": seconds, "rounds": rounds, "connections": CONNECTIONS, "latency_requests": LATENCY_REQUESTS, "tool": "host/benches/peers.rs (hyper 1 HTTP/1.1 client)", "wasmtime": WASMTIME_VERSION },
            "throughput_latency": measured,
            "ratios": {
                "hello_rps_vs_wasmtime": ratio(f("microhost-hello", "rps"), f("wasmtime-serve", "rps")),
                "hello_rps_vs_native": ratio(f("microhost-hello", "rps"), f("native", "rps")),
                "hello_p50_vs_wasmtime": ratio(f("microhost-hello", "p50_us"), f("wasmtime-serve", "p50_us")),
                "reuse_rps_vs_wasmtime": ratio(f("microhost-hello-reuse", "rps"), f("wasmtime-serve", "rps")),
                "reuse_rps_vs_wasmtime_reuse": ratio(f("microhost-hello-reuse", "rps"), f("wasmtime-serve-reuse", "rps")),
                "reuse_rps_vs_native": ratio(f("microhost-hello-reuse", "rps"), f("native", "rps")),
                "access_log_cpu_vs_off": ratio(f("microhost-hello-logged", "cpu_us_per_request"), f("microhost-hello", "cpu_us_per_request")),
                "access_log_rps_vs_off": ratio(f("microhost-hello-logged", "rps"), f("microhost-hello", "rps")),
            },
            "baseline": {
                "kv_read_rps_vs_native": ratio(f("microhost-kv-read", "rps"), f("native-kv-read", "rps")),
                "order_flow_vs_native": ratio(f("microhost-order", "settled_per_sec"), f("native-order", "settled_per_sec")),
                "order_201_vs_native": ratio(f("microhost-order", "rps"), f("native-order", "rps")),
                "publish_rps_vs_native": ratio(f("microhost-publish", "rps"), f("native-publish", "rps")),
                "events_end_to_end_vs_native": ratio(f("microhost-publish", "settled_per_sec"), f("native-publish", "settled_per_sec")),
                "publish_rps_vs_hello": ratio(f("microhost-publish", "rps"), f("microhost-hello", "rps")),
                "order_flow_vs_hello": ratio(f("microhost-order", "settled_per_sec"), f("microhost-hello", "rps")),
            },
            "hot_swap": swap,
            "cold_start": cold,
            "instructions_per_request": instructions,
            "languages": languages,
            "bus": bus,
        });
        let docs = root().join("docs");
        std::fs::write(docs.join("benchmarks.json"), serde_json::to_string_pretty(&report)? + "\n")?;
        std::fs::write(docs.join("benchmarks.md"), markdown(&report))?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })
}
