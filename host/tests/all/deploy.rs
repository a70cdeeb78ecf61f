//! Hot-swap v0: the admin API, refused deploys, and a deploy under load that drops
//! nothing.

use crate::support::{Host, Svc, data_dir, wasm};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?;
    let url = host.admin_url("/admin/services");
    for token in [None, Some("wrong"), Some("")] {
        let r = host
            .send(http::Method::GET, &url, Bytes::new(), token)
            .await?;
        assert_eq!(r.status, 401, "token {token:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let token = host.running.admin_token.clone();
    let r = host
        .send(http::Method::GET, &url, Bytes::new(), Some(&token))
        .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["services"][0]["name"], "echo");
    assert_eq!(r.json()["services"][0]["active"]["version"], "v1");

    // The generated token is where the CLI looks for it.
    let on_disk = std::fs::read_to_string(dir.path().join(microhost::ADMIN_TOKEN_FILE))?;
    assert_eq!(on_disk, token);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_admin_address_needs_a_configured_token() -> anyhow::Result<()> {
    let dir = data_dir();
    let mut config = crate::support::config(&[Svc::new("echo", "/", "test-echo")], dir.path())?;
    config.admin_listen = "0.0.0.0:0".parse()?;
    let error = match microhost::start(config).await {
        Ok(_) => panic!("started with a public admin API and no token"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("non-loopback"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_deploys_say_why_and_leave_the_old_version_serving() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "text file",
            b"this is not wasm".to_vec(),
            400,
            "not a WebAssembly file",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            400,
            "core WebAssembly module",
        ),
        (
            "command component",
            std::fs::read(wasm("test-wrong-world"))?,
            400,
            "does not export `wasi:http/incoming-handler`",
        ),
        (
            "truncated component",
            std::fs::read(wasm("test-echo"))?[..5000].to_vec(),
            400,
            "invalid component",
        ),
        ("empty body", Vec::new(), 400, "empty"),
    ];
    for (what, bytes, status, reason) in cases {
        let r = host.deploy("echo", "v2", bytes).await?;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
        assert!(detail.contains(reason), "{what}: {detail}");
        let served = host.get("/still").await?;
        assert_eq!(served.status, 200, "{what} broke the service");
        assert_eq!(served.served_by(), Some("echo@v1"), "{what} replaced v1");
    }

    let r = host
        .deploy("nope", "v2", std::fs::read(wasm("test-echo"))?)
        .await?;
    assert_eq!(r.status, 404);
    let r = host
        .deploy("echo", "bad%21label", std::fs::read(wasm("test-echo"))?)
        .await?;
    assert_eq!(r.status, 400);
    // The active label with other content is a conflict; the same content is a no-op.
    let r = host
        .deploy("echo", "v1", std::fs::read(wasm("test-slow"))?)
        .await?;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = host
        .deploy("echo", "v1", std::fs::read(wasm("test-echo"))?)
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["switched"], false);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_under_load_drops_nothing() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Arc::new(Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    // (started, version, status) of every request.
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (host, stop, done) = (host.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = host.post(&format!("/w{worker}"), "payload").await;
                let (status, version) = match r {
                    Ok(r) => (r.status, r.served_by().unwrap_or("none").to_string()),
                    Err(e) => (0, format!("transport error: {e}")),
                };
                seen.push((started, version, status));
                done.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    crate::assert_eventually!(
        Duration::from_secs(30),
        done.load(Ordering::Relaxed) >= 100,
        "no traffic"
    );
    let r = host
        .deploy("echo", "v2", std::fs::read(wasm("test-echo"))?)
        .await;
    let switched_at = Instant::now();
    let r = r?;
    assert_eq!(r.status, 201, "{}", r.text());
    let before = done.load(Ordering::Relaxed);
    crate::assert_eventually!(
        Duration::from_secs(30),
        done.load(Ordering::Relaxed) >= before + 100,
        "no traffic after the deploy"
    );
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await?);
    }
    let failed: Vec<_> = all.iter().filter(|(_, _, s)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(5)]
    );
    let v1 = all.iter().filter(|(_, v, _)| v == "echo@v1").count();
    let v2 = all.iter().filter(|(_, v, _)| v == "echo@v2").count();
    assert_eq!(v1 + v2, all.len(), "every response names v1 or v2");
    assert!(v1 >= 100 && v2 >= 100, "v1 {v1}, v2 {v2}");
    // A request that started after the deploy answered is served by v2.
    let stale = all
        .iter()
        .filter(|(started, v, _)| *started > switched_at && v == "echo@v1")
        .count();
    assert_eq!(
        stale, 0,
        "{stale} requests started after the switch were served by v1"
    );

    let host = Arc::try_unwrap(host).map_err(|_| anyhow::anyhow!("host still shared"))?;
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deploys_to_a_running_host() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_microhost"))
        .arg("deploy")
        .arg("echo")
        .arg(wasm("test-echo"))
        .args(["--version", "from-cli"])
        .arg("--admin")
        .arg(host.admin_url(""))
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("MICROHOST_ADMIN_TOKEN")
        .output()
        .await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(answer["version"], "from-cli");
    assert_eq!(host.get("/x").await?.served_by(), Some("echo@from-cli"));

    // A refused deploy exits non-zero and says why.
    let wrong = wasm("test-wrong-world");
    let output = host
        .cli(&["deploy", "echo", &wrong.display().to_string()])
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("incoming-handler"),
        "{stderr}"
    );

    let output = host.cli(&["services"]).await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(answer["services"][0]["active"]["version"], "from-cli");
    host.shutdown().await;
    Ok(())
}
