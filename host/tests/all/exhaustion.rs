//! No client can exhaust the host (issue 13): auth routes are rate limited per client
//! address.

use crate::edge::connect_from;
use crate::support::{Host, Svc, data_dir, metric};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The seed's user service (register, login, token issuing) and an echo service.
fn services() -> Vec<Svc> {
    vec![
        Svc::new("user", "/api/users", "user")
            .set("protected = true")
            .set(r#"public = ["POST /api/users/register", "POST /api/users/login"]"#)
            .set("auth = { issue_tokens = true }")
            .publishes("user.registered"),
        Svc::new("echo", "/", "test-echo"),
    ]
}

fn register_request(email: &str) -> Vec<u8> {
    let body =
        serde_json::json!({ "email": email, "password": "correct horse", "name": "N" }).to_string();
    format!(
        "POST /api/users/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `raw` from `from` and reads the answer's status line.
async fn status_from(
    from: Ipv4Addr,
    addr: std::net::SocketAddr,
    raw: &[u8],
) -> anyhow::Result<u16> {
    let mut stream = connect_from(from, addr).await?;
    stream.write_all(raw).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {head:?}"))
}

/// The routes of a service granted `issue_tokens` get `[auth] rate_limit` (5 a second,
/// burst 10) per client address; other addresses and other services are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_routes_are_rate_limited_per_client_address() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&services(), dir.path()).await?;
    let addr = host.running.gateway_addr;
    let guesser = Ipv4Addr::new(127, 0, 2, 1);
    // 15 at once: the burst of 10 passes, the rest find the bucket empty.
    let guesses: Vec<_> = (0..15)
        .map(|i| {
            let raw = register_request(&format!("guess-{i}@example.com"));
            tokio::spawn(async move { status_from(guesser, addr, &raw).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await??);
    }
    statuses.sort();
    let served = statuses.iter().filter(|s| **s == 201).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(served + limited, 15, "{statuses:?}");
    assert!((10..=11).contains(&served), "{statuses:?}");
    let raw = register_request("someone-else@example.com");
    assert_eq!(
        status_from(Ipv4Addr::new(127, 0, 2, 2), addr, &raw).await?,
        201,
        "another address has its own bucket"
    );
    for _ in 0..20 {
        assert_eq!(host.get("/not-an-auth-route").await?.status, 200);
    }
    assert!(
        metric(
            &host.metrics().await?,
            "microhost_rate_limited_total",
            &[("service", "user")]
        ) >= 1.0
    );
    host.shutdown().await;
    Ok(())
}
