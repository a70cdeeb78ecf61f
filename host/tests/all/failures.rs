//! Failure stays inside its service: trap → 502, runaway loop → 504 at the deadline,
//! memory bomb → 502; the host and the other services keep serving.

use crate::support::{Host, Svc, data_dir};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_costs_only_that_request() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("trap", "/trap", "test-trap"),
            Svc::new("echo", "/echo", "test-echo"),
        ],
        dir.path(),
    )
    .await?;

    let r = host.get("/trap/now").await?;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let problem = r.json();
    assert_eq!(problem["service"], "trap");
    assert_eq!(problem["version"], "v1");
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("trapped"),
        "{problem}"
    );
    assert_eq!(r.served_by(), Some("trap@v1"));

    assert_eq!(host.get("/echo/next").await?.status, 200);
    // The trapping service itself still gets fresh instances.
    assert_eq!(host.get("/trap/again").await?.status, 502);
    assert_eq!(host.get("/echo/after").await?.status, 200);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_loop_is_stopped_at_its_timeout() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("spin", "/spin", "test-loop").timeout_ms(800),
            Svc::new("echo", "/echo", "test-echo"),
        ],
        dir.path(),
    )
    .await?;
    let url = host.url("/spin/forever");
    let client = crate::support::client();
    let started = Instant::now();
    let spinning = tokio::spawn(async move {
        let r =
            crate::support::send(&client, http::Method::GET, &url, bytes::Bytes::new(), None).await;
        (r, started.elapsed())
    });

    // While it spins, another service answers promptly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let r = host.get("/echo/meanwhile").await?;
        assert_eq!(r.status, 200);
    }
    assert!(
        !spinning.is_finished(),
        "the loop was stopped before its timeout"
    );

    let (r, elapsed) = spinning.await?;
    let r = r?;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap_or("").contains("800 ms"));
    assert!(
        elapsed >= Duration::from_millis(800),
        "stopped early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(800 + 1000),
        "stopped late: {elapsed:?}"
    );
    assert_eq!(host.get("/echo/after").await?.status, 200);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_its_limit_and_the_host_lives() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("bomb", "/bomb", "test-alloc").memory_mib(16),
            Svc::new("echo", "/echo", "test-echo"),
        ],
        dir.path(),
    )
    .await?;
    for _ in 0..3 {
        let r = host.get("/bomb/boom").await?;
        assert_eq!(r.status, 502, "{}", r.text());
        let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
        assert!(detail.contains("memory limit of 16 MiB"), "{detail}");
        assert_eq!(host.get("/echo/alive").await?.status, 200);
    }
    host.shutdown().await;
    Ok(())
}

/// A guest gets no sockets of its own: creating a TCP or UDP socket is refused with
/// `access-denied` and a name lookup fails (outgoing HTTP is the only way out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_open_a_socket() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("socket", "/", "test-socket")], dir.path()).await?;
    let r = host.get("/").await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    println!("sockets: {seen}");
    assert_eq!(seen["tcp"], "access-denied", "{seen}");
    assert_eq!(seen["udp"], "access-denied", "{seen}");
    assert_ne!(seen["lookup"], "created", "{seen}");
    host.shutdown().await;
    Ok(())
}

/// wasi:http lets a guest set any three-digit status; a client gets only HTTP's (100 to
/// 599): another is a broken response, 502, and counts against the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_that_is_not_http_is_a_502() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?;
    for status in [600, 602, 999] {
        let r = host.get(&format!("/x?status={status}")).await?;
        assert_eq!(r.status, 502, "{status}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
        assert!(
            detail.contains(&format!("status {status}")) && detail.contains("not an HTTP status"),
            "{detail}"
        );
    }
    assert_eq!(host.get("/x?status=599").await?.status, 599);
    host.shutdown().await;
    Ok(())
}
