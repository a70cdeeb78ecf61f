//! The real `microhost` binary: start-up errors, and SIGTERM with a request in flight.

use crate::support::{Svc, data_dir, manifest_toml};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn microhost() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_microhost"));
    cmd.env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("MICROHOST_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `microhost serve --manifest FILE` on ephemeral loopback ports.
fn serve(manifest: &std::path::Path, data: &std::path::Path) -> Command {
    serve_from("--manifest", manifest, data)
}

/// `microhost serve {source} FILE` (`--manifest` or `--component`) on ephemeral
/// loopback ports.
fn serve_from(source: &str, file: &std::path::Path, data: &std::path::Path) -> Command {
    let mut cmd = microhost();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .arg(source)
    .arg(file)
    .arg("--data-dir")
    .arg(data);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_stops_start_up_naming_file_and_field() -> anyhow::Result<()> {
    let dir = data_dir();
    let manifest = dir.path().join("bad.toml");
    let text = manifest_toml(&[Svc::new("echo", "/", "test-echo").memory_mib(0)]);
    std::fs::write(&manifest, text)?;
    let output = serve(&manifest, dir.path()).output().await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("limits.memory_mib"), "{stderr}");
    assert!(stderr.contains("got 0"), "{stderr}");
    Ok(())
}

/// A `microhost serve` process on ephemeral ports, with its log drained.
struct Process {
    child: tokio::process::Child,
    gateway: String,
    admin: String,
    log: tokio::task::JoinHandle<Vec<String>>,
}

async fn spawn_host(manifest: &std::path::Path, data: &std::path::Path) -> anyhow::Result<Process> {
    spawn(serve(manifest, data)).await
}

/// Starts `cmd` (a `microhost serve ...`) with the shared component cache, and waits
/// until it serves.
async fn spawn(mut cmd: Command) -> anyhow::Result<Process> {
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
    let mut child = cmd
        .arg("--cache-dir")
        .arg(&cache)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let mut early = Vec::new();
    let field = |line: &str, name: &str| {
        line.split(name)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    };
    let (gateway, admin) = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("gateway_addr=") {
                return Ok((field(&line, "gateway_addr="), field(&line, "admin_addr=")));
            }
            early.push(line);
        }
        anyhow::bail!("the host exited before serving: {early:#?}")
    })
    .await??;
    // Keep draining the log so the host never blocks on a full pipe.
    let log = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });
    Ok(Process {
        child,
        gateway,
        admin,
        log,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() -> anyhow::Result<()> {
    let dir = data_dir();
    let manifest = dir.path().join("microhost.toml");
    std::fs::write(
        &manifest,
        manifest_toml(&[Svc::new("slow", "/", "test-slow")]),
    )?;
    let Process {
        mut child,
        gateway,
        log,
        ..
    } = spawn_host(&manifest, dir.path()).await?;

    let url = format!("http://{gateway}/sleep?ms=800");
    let in_flight = tokio::spawn(async move {
        let client = crate::support::client();
        crate::support::send(&client, http::Method::GET, &url, bytes::Bytes::new(), None).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(killed.success());

    let r = in_flight.await??;
    assert_eq!(r.status, 200, "{}", r.text());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(status.success(), "exit status {status}");
    let log = log.await?;
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_one_component_without_a_manifest() -> anyhow::Result<()> {
    let dir = data_dir();
    let cmd = serve_from(
        "--component",
        &crate::support::wasm("test-echo"),
        dir.path(),
    );
    let Process {
        mut child, gateway, ..
    } = spawn(cmd).await?;
    let client = crate::support::client();
    let url = format!("http://{gateway}/any/path");
    let r =
        crate::support::send(&client, http::Method::GET, &url, bytes::Bytes::new(), None).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.served_by(), Some("app@local"));
    assert_eq!(r.json()["path"], "/any/path");
    child.start_kill()?;
    child.wait().await?;
    Ok(())
}

/// Publishes through HTTP while the host is killed with SIGKILL at random moments, many
/// times over, then checks: every event whose publishing request got a 2xx was
/// delivered, none was applied twice, and the store reopened every time.
/// `MICROHOST_CRASH_CYCLES` sets the number of cycles (default 50).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event_and_applies_none_twice() -> anyhow::Result<()> {
    use rand::{Rng as _, SeedableRng as _};
    let cycles: usize = std::env::var("MICROHOST_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = rand::random();
    println!("crash test: {cycles} cycles, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = data_dir();
    let manifest = dir.path().join("microhost.toml");
    let services = [
        Svc::new("pub", "/pub", "test-publish").publishes("crash.events"),
        // Listing every count at the end reads one key per event: give it time.
        Svc::new("sub", "/sub", "test-subscriber")
            .timeout_ms(120_000)
            .subscribe("crash.events", 1000, 10)
            .config("record_order", "false"),
    ];
    std::fs::write(&manifest, manifest_toml(&services))?;

    let mut acknowledged: Vec<String> = Vec::new();
    let mut attempted = 0usize;
    for cycle in 0..cycles {
        let mut host = spawn_host(&manifest, dir.path()).await?;
        let mut workers = Vec::new();
        for worker in 0..4 {
            let gateway = host.gateway.clone();
            workers.push(tokio::spawn(async move {
                let client = crate::support::client();
                let mut acked = Vec::new();
                let mut sent = 0usize;
                for i in 0.. {
                    let data = format!("c{cycle}-w{worker}-{i}");
                    let url = format!("http://{gateway}/pub/pub/crash.events");
                    sent += 1;
                    let r = crate::support::send(
                        &client,
                        http::Method::POST,
                        &url,
                        bytes::Bytes::from(data.clone()),
                        None,
                    )
                    .await;
                    match r {
                        Ok(r) if r.status == 201 => acked.push(data),
                        // The host is gone: this cycle is over for this worker.
                        _ => break,
                    }
                }
                (acked, sent)
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..300))).await;
        host.child.start_kill()?;
        host.child.wait().await?;
        for worker in workers {
            let (acked, sent) = worker.await?;
            acknowledged.extend(acked);
            attempted += sent;
        }
        drop(host.log);
    }

    // A last start: everything acknowledged must arrive, exactly once.
    let host = spawn_host(&manifest, dir.path()).await?;
    let client = crate::support::client();
    let counts_url = format!("http://{}/sub/counts", host.gateway);
    // Generous: the subscriber works through the backlog of every cycle.
    let deadline = std::time::Instant::now()
        + Duration::from_secs(60)
        + Duration::from_millis(20) * acknowledged.len() as u32;
    let counts: serde_json::Map<String, serde_json::Value> = loop {
        let r = crate::support::send(
            &client,
            http::Method::GET,
            &counts_url,
            bytes::Bytes::new(),
            None,
        )
        .await?;
        anyhow::ensure!(r.status == 200, "counts: {} {}", r.status, r.text());
        let counts: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&r.body)?;
        let missing = acknowledged
            .iter()
            .filter(|a| !counts.contains_key(*a))
            .count();
        if missing == 0 {
            break counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} acknowledged events were never delivered",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let twice: Vec<(&String, &serde_json::Value)> =
        counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    println!(
        "crash test: {cycles} kills, {attempted} publish requests, {} acknowledged, {} applied once each",
        acknowledged.len(),
        counts.len()
    );
    assert!(
        acknowledged.len() >= cycles,
        "too little traffic to mean anything"
    );
    let mut host = host;
    host.child.start_kill()?;
    host.child.wait().await?;
    Ok(())
}

/// A read-only GET answers only with what is durable: killed right after a GET returned a
/// value that a concurrent request wrote, the host has that value after restart. (Several
/// writers, so that a batch is often applied while the flush before it is on its way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_a_read_keeps_what_the_read_returned() -> anyhow::Result<()> {
    use rand::{Rng as _, SeedableRng as _};
    const WRITERS: u64 = 4;
    let cycles: usize = std::env::var("MICROHOST_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = rand::random();
    println!("read-crash test: {cycles} cycles, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = data_dir();
    let manifest = dir.path().join("microhost.toml");
    std::fs::write(&manifest, manifest_toml(&[Svc::new("kv", "/", "test-kv")]))?;
    let value_of = |body: &[u8]| -> anyhow::Result<u64> { Ok(std::str::from_utf8(body)?.parse()?) };
    let get = |client, url: String| async move {
        crate::support::send(&client, http::Method::GET, &url, bytes::Bytes::new(), None).await
    };
    // Each writer counts up on its own key; the next cycle goes on from where it was.
    let mut next = [1u64; WRITERS as usize];
    let mut reads = 0usize;
    for _ in 0..cycles {
        let mut host = spawn_host(&manifest, dir.path()).await?;
        let mut writers = Vec::new();
        for (w, first) in next.iter().enumerate() {
            let url = format!("http://{}/kv/w{w}", host.gateway);
            let first = *first;
            writers.push(tokio::spawn(async move {
                let client = crate::support::client();
                for value in first.. {
                    let body = bytes::Bytes::from(value.to_string());
                    let r =
                        crate::support::send(&client, http::Method::PUT, &url, body, None).await;
                    if !matches!(r, Ok(r) if r.status == 204) {
                        return value;
                    }
                }
                unreachable!("the host is killed first")
            }));
        }
        // Read round the keys until a value written well into this cycle comes back.
        let client = crate::support::client();
        let wanted = next[0] + rng.gen_range(5..60);
        let (key, seen) = loop {
            let w = reads as u64 % WRITERS;
            let r = get(client.clone(), format!("http://{}/kv/w{w}", host.gateway)).await?;
            reads += 1;
            if r.status == 200 {
                let value = value_of(&r.body)?;
                if value >= wanted {
                    break (w, value);
                }
            }
        };
        host.child.start_kill()?;
        host.child.wait().await?;
        for (w, writer) in writers.into_iter().enumerate() {
            next[w] = writer.await? + 1;
        }

        let mut host = spawn_host(&manifest, dir.path()).await?;
        let r = get(client.clone(), format!("http://{}/kv/w{key}", host.gateway)).await?;
        anyhow::ensure!(r.status == 200, "after restart: {} {}", r.status, r.text());
        let kept = value_of(&r.body)?;
        assert!(
            kept >= seen,
            "a GET of w{key} returned {seen}, and after kill -9 the store holds {kept}"
        );
        host.child.start_kill()?;
        host.child.wait().await?;
    }
    println!(
        "read-crash test: {cycles} kills right after a read, {reads} reads, {} writes",
        next.iter().map(|n| n - 1).sum::<u64>()
    );
    Ok(())
}

/// `microhost <args> --admin <url> --data-dir <dir>`: the CLI against a spawned host,
/// finding the generated token in the data directory.
async fn cli(
    host: &Process,
    data: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let output = microhost()
        .args(args)
        .arg("--admin")
        .arg(format!("http://{}", host.admin))
        .arg("--data-dir")
        .arg(data)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "microhost {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Registry changes made with the CLI are on disk when the CLI returns: a `kill -9`
/// right after loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_changes_survive_kill_9() -> anyhow::Result<()> {
    let dir = data_dir();
    let data = dir.path();
    let manifest = data.join("microhost.toml");
    std::fs::write(
        &manifest,
        manifest_toml(&[Svc::new("echo", "/", "test-echo")]),
    )?;
    let echo = crate::support::wasm("test-echo").display().to_string();
    let kv = crate::support::wasm("test-kv").display().to_string();

    let mut host = spawn_host(&manifest, data).await?;
    cli(
        &host,
        data,
        &["deploy", "echo", &echo, "--version", "2.0.0"],
    )
    .await?;
    cli(
        &host,
        data,
        &[
            "deploy",
            "echo",
            &kv,
            "--version",
            "3.0.0+kv",
            "--store-only",
        ],
    )
    .await?;
    cli(
        &host,
        data,
        &["canary", "echo", "3.0.0+kv", "--weight", "25"],
    )
    .await?;
    let before = cli(&host, data, &["history", "echo"]).await?;
    host.child.start_kill()?;
    host.child.wait().await?;

    let mut host = spawn_host(&manifest, data).await?;
    let status = cli(&host, data, &["status", "echo"]).await?;
    assert_eq!(status["active"]["version"], "2.0.0", "{status}");
    assert_eq!(status["canary"]["version"], "3.0.0+kv", "{status}");
    assert_eq!(status["canary"]["weight"], 25);
    assert_eq!(status["active"]["loaded_from_cache"], true);
    assert_eq!(cli(&host, data, &["history", "echo"]).await?, before);
    let versions = cli(&host, data, &["versions", "echo"]).await?;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(3));

    cli(&host, data, &["promote", "echo"]).await?;
    cli(&host, data, &["rollback", "echo"]).await?;
    cli(&host, data, &["activate", "echo", "v1"]).await?;
    host.child.start_kill()?;
    host.child.wait().await?;

    let mut host = spawn_host(&manifest, data).await?;
    let status = cli(&host, data, &["status", "echo"]).await?;
    assert_eq!(status["active"]["version"], "v1", "{status}");
    assert!(status["canary"].is_null(), "{status}");
    let history = cli(&host, data, &["history", "echo"]).await?;
    let actions: Vec<&str> = history["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "manifest", "deploy", "deploy", "canary", "promote", "rollback", "activate"
        ]
    );
    let client = crate::support::client();
    let url = format!("http://{}/x", host.gateway);
    let r =
        crate::support::send(&client, http::Method::GET, &url, bytes::Bytes::new(), None).await?;
    assert_eq!(r.served_by(), Some("echo@v1"));
    host.child.start_kill()?;
    host.child.wait().await?;
    Ok(())
}

/// `VmRSS` and `VmHWM` (peak RSS) of process `pid`, in KiB, from `/proc/{pid}/status`.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A guest writing 1,000 values of 4 MiB in one request (and trying on after every
/// refusal) meets its write budget: the host's RSS stays under the budget
/// (`limits.write_kib`, 16 MiB) plus 100 MiB over what it was before the request, the
/// guest sees the error, and another service answers meanwhile. The host runs as its
/// own process so that its RSS is its own (tests in this binary run side by side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_bomb_keeps_the_hosts_memory_within_its_budget() -> anyhow::Result<()> {
    let dir = data_dir();
    let manifest = dir.path().join("microhost.toml");
    let services = [
        Svc::new("hog", "/hog", "test-hog")
            .memory_mib(64)
            .timeout_ms(120_000),
        Svc::new("echo", "/echo", "test-echo"),
    ];
    std::fs::write(&manifest, manifest_toml(&services))?;
    let Process {
        mut child, gateway, ..
    } = spawn_host(&manifest, dir.path()).await?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let client = crate::support::client();
    let post = |path: &str| {
        let (client, url) = (client.clone(), format!("http://{gateway}{path}"));
        async move {
            crate::support::send(&client, http::Method::POST, &url, bytes::Bytes::new(), None).await
        }
    };
    let echo_url = format!("http://{gateway}/echo/meanwhile");
    // Warm both services up with ordinary requests first.
    for _ in 0..3 {
        let r = post("/hog/write?count=4&kib=64").await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = crate::support::send(
            &client,
            http::Method::GET,
            &echo_url,
            bytes::Bytes::new(),
            None,
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    let (before, peak_before) = memory_kib(pid)?;
    let started = std::time::Instant::now();
    let bomb = tokio::spawn(post("/hog/write?count=1000&kib=4096"));
    let (mut sampled, mut answered) = (before, 0);
    while !bomb.is_finished() {
        sampled = sampled.max(memory_kib(pid)?.0);
        let r = crate::support::send(
            &client,
            http::Method::GET,
            &echo_url,
            bytes::Bytes::new(),
            None,
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        answered += 1;
        sampled = sampled.max(memory_kib(pid)?.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = bomb.await??;
    let elapsed = started.elapsed();
    let (after, peak_after) = memory_kib(pid)?;
    let peak = sampled.max(peak_after);
    let budget_kib = 16 * 1024;
    println!(
        "write bomb (1,000 x 4 MiB) took {elapsed:?}: RSS before {} MiB (peak so far {} MiB), \
         highest sample {} MiB, peak {} MiB, after {} MiB; growth {} MiB, allowed {} MiB; \
         echo answered {answered} times meanwhile; the guest saw {}",
        before / 1024,
        peak_before / 1024,
        sampled / 1024,
        peak / 1024,
        after / 1024,
        peak.saturating_sub(before) / 1024,
        (budget_kib + 100 * 1024) / 1024,
        r.text()
    );
    assert_eq!(r.status, 500, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["written"], 3, "{seen}");
    assert_eq!(seen["refused"], 997, "{seen}");
    assert!(
        seen["error"]
            .as_str()
            .is_some_and(|e| e.contains("`limits.write_kib`")),
        "{seen}"
    );
    assert!(answered > 0, "echo was not asked while the bomb ran");
    assert!(
        peak.saturating_sub(before) < budget_kib + 100 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    child.start_kill()?;
    child.wait().await?;
    Ok(())
}

/// A secret from an environment variable reaches the guest through `wasi:config/store`
/// (`test-echo` answers its `greeting`), one from a file replaces it on `apply`, and
/// neither value appears in any admin answer, log line or error; a missing secret
/// refuses start-up and `apply`, naming the secret and its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_guest_and_nothing_else() -> anyhow::Result<()> {
    const FROM_ENV: &str = "env-secret-4f1c9a7e2b";
    const FROM_FILE: &str = "file-secret-8d3b6e0c5a";
    let dir = data_dir();
    let manifest = dir.path().join("microhost.toml");
    let write = |source: &str| {
        let echo =
            Svc::new("echo", "/", "test-echo").set(&format!("secrets = {{ greeting = {source} }}"));
        std::fs::write(&manifest, manifest_toml(&[echo]))
    };
    write(r#"{ env = "ECHO_GREETING_SECRET" }"#)?;

    // Missing: start-up stops, naming the service, the secret and the variable.
    let output = serve(&manifest, dir.path())
        .env_remove("ECHO_GREETING_SECRET")
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for part in [
        "microhost.toml",
        "\"echo\"",
        "secrets.greeting",
        "ECHO_GREETING_SECRET",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }

    let mut cmd = serve(&manifest, dir.path());
    cmd.env("ECHO_GREETING_SECRET", FROM_ENV);
    let mut host = spawn(cmd).await?;
    let token = std::fs::read_to_string(dir.path().join(microhost::ADMIN_TOKEN_FILE))?;
    let client = crate::support::client();
    let gateway = |path: &str| format!("http://{}{path}", host.gateway);
    let admin = |path: &str| format!("http://{}{path}", host.admin);
    let send = |method: http::Method, url: String, auth: bool| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let token = auth.then_some(token.as_str());
            crate::support::send(&client, method, &url, bytes::Bytes::new(), token).await
        }
    };

    let answer = send(http::Method::GET, gateway("/hello"), false).await?;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["greeting"], FROM_ENV, "{}", answer.text());

    // Everything an operator can read (the guest's own answers aside).
    let mut seen = Vec::new();
    let read_admin = |seen: &mut Vec<String>, resp: crate::support::Resp| {
        seen.push(format!("{} {}", resp.status, resp.text()));
    };
    for path in [
        "/admin/services",
        "/admin/services/echo",
        "/admin/services/echo/versions",
        "/admin/services/echo/history",
        "/admin/topics",
        "/metrics",
        "/healthz",
    ] {
        let resp = send(http::Method::GET, admin(path), true).await?;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        read_admin(&mut seen, resp);
    }
    // Refusals: an unknown service, a component that is none.
    read_admin(
        &mut seen,
        send(http::Method::GET, admin("/admin/services/nope"), true).await?,
    );
    let bad = crate::support::send(
        &client,
        http::Method::POST,
        &admin("/admin/services/echo/versions?version=bad"),
        bytes::Bytes::from_static(b"not a component"),
        Some(&token),
    )
    .await?;
    assert!(bad.status >= 400, "{}", bad.text());
    read_admin(&mut seen, bad);

    // A file secret replaces it on apply; a missing file refuses the apply, naming it.
    std::fs::write(dir.path().join("greeting.txt"), format!("{FROM_FILE}\n"))?;
    write(r#"{ file = "greeting.txt" }"#)?;
    let applied = send(http::Method::POST, admin("/admin/apply"), true).await?;
    assert_eq!(applied.status, 200, "{}", applied.text());
    read_admin(&mut seen, applied);
    crate::assert_eventually!(
        Duration::from_secs(10),
        send(http::Method::GET, gateway("/hello"), false)
            .await?
            .json()["greeting"]
            == FROM_FILE,
        "the file secret did not reach the guest"
    );
    write(r#"{ file = "gone.txt" }"#)?;
    let refused = send(http::Method::POST, admin("/admin/apply"), true).await?;
    assert!(
        refused.status >= 400
            && refused.text().contains("secrets.greeting")
            && refused.text().contains("gone.txt"),
        "{} {}",
        refused.status,
        refused.text()
    );
    read_admin(&mut seen, refused);
    for path in ["/admin/services/echo", "/admin/services/echo/history"] {
        let resp = send(http::Method::GET, admin(path), true).await?;
        read_admin(&mut seen, resp);
    }

    host.child.start_kill()?;
    host.child.wait().await?;
    let log = host.log.await?;
    assert!(!log.is_empty());
    seen.extend(log);
    for line in &seen {
        for secret in [FROM_ENV, FROM_FILE] {
            assert!(!line.contains(secret), "a secret leaked: {line}");
        }
    }
    Ok(())
}

/// Clients post with an `Idempotency-Key` each while the host is killed (`kill -9`);
/// after a restart every request whose answer was lost is retried with its key. Each
/// request ran exactly once (the counter ends at the number of keys) and every answer,
/// first or retried, is its own run's (the answers are 1..=N, each once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_posting_with_idempotency_keys_runs_each_once() -> anyhow::Result<()> {
    const CLIENTS: usize = 4;
    const CYCLES: usize = 5;
    let dir = data_dir();
    let manifest = dir.path().join("microhost.toml");
    std::fs::write(&manifest, manifest_toml(&[Svc::new("kv", "/", "test-kv")]))?;
    type Client = hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >;
    let post = |client: Client, url: String, key: String| async move {
        let request = http::Request::post(url)
            .header("idempotency-key", key)
            .body(http_body_util::Full::new(bytes::Bytes::new()))?;
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        anyhow::ensure!(status == 200, "{status} {}", String::from_utf8_lossy(&body));
        Ok::<u64, anyhow::Error>(std::str::from_utf8(&body)?.parse()?)
    };
    let mut answers: std::collections::BTreeMap<String, u64> = Default::default();
    let mut lost: Vec<String> = Vec::new();
    let mut keys = 0usize;
    for cycle in 0..CYCLES {
        let mut host = spawn_host(&manifest, dir.path()).await?;
        let url = format!("http://{}/kv/orders/incr", host.gateway);
        // The answers lost in the last crash first, with their keys.
        for key in std::mem::take(&mut lost) {
            let value = post(crate::support::client(), url.clone(), key.clone()).await?;
            answers.insert(key, value);
        }
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let url = url.clone();
            clients.push(tokio::spawn(async move {
                let client = crate::support::client();
                let mut done = Vec::new();
                for i in 0.. {
                    let key = format!("cycle{cycle}-client{c}-{i}");
                    match post(client.clone(), url.clone(), key.clone()).await {
                        Ok(value) => done.push((key, value)),
                        Err(_) => return (done, key),
                    }
                }
                unreachable!("the host is killed first")
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + 100 * cycle as u64)).await;
        host.child.start_kill()?;
        host.child.wait().await?;
        for client in clients {
            let (done, cut) = client.await?;
            keys += done.len() + 1;
            answers.extend(done);
            lost.push(cut);
        }
    }
    let mut host = spawn_host(&manifest, dir.path()).await?;
    let url = format!("http://{}/kv/orders/incr", host.gateway);
    for key in std::mem::take(&mut lost) {
        let value = post(crate::support::client(), url.clone(), key.clone()).await?;
        answers.insert(key, value);
    }
    // A retry of an answered key gets its answer again, not a new run.
    let (key, value) = answers
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), *v))
        .unwrap_or_default();
    assert_eq!(
        post(crate::support::client(), url.clone(), key).await?,
        value
    );
    let counter = crate::support::send(
        &crate::support::client(),
        http::Method::GET,
        &format!("http://{}/kv/orders", host.gateway),
        bytes::Bytes::new(),
        None,
    )
    .await?;
    assert_eq!(answers.len(), keys);
    assert_eq!(
        counter.text(),
        keys.to_string(),
        "each keyed request ran once"
    );
    let mut values: Vec<u64> = answers.values().copied().collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=keys as u64).collect::<Vec<_>>(),
        "every answer is its own run's"
    );
    println!("idempotency crash test: {CYCLES} kills, {keys} keyed requests");
    host.child.start_kill()?;
    host.child.wait().await?;
    Ok(())
}
