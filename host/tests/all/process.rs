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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_stops_start_up_naming_file_and_field() -> anyhow::Result<()> {
    let dir = data_dir();
    let manifest = dir.path().join("bad.toml");
    let text = manifest_toml(&[Svc::new("echo", "/", "test-echo").memory_mib(0)]);
    std::fs::write(&manifest, text)?;
    let output = microhost()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--manifest")
        .arg(&manifest)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("limits.memory_mib"), "{stderr}");
    assert!(stderr.contains("got 0"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() -> anyhow::Result<()> {
    let dir = data_dir();
    let manifest = dir.path().join("microhost.toml");
    std::fs::write(
        &manifest,
        manifest_toml(&[Svc::new("slow", "/", "test-slow")]),
    )?;
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
    let mut child = microhost()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--manifest")
        .arg(&manifest)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--cache-dir")
        .arg(&cache)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let gateway = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.split("gateway_addr=").nth(1) {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string());
            }
        }
        anyhow::bail!("the host exited before serving")
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
