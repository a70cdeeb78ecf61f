//! `Idempotency-Key`: a `POST` runs once per key; retries get the stored answer, a
//! different request under the key 422, a concurrent one 409; keys expire.

use crate::support::{Host, Svc, data_dir};
use bytes::Bytes;
use std::time::Duration;

async fn incr(host: &Host, path: &str, key: &str) -> anyhow::Result<crate::support::Resp> {
    host.request(
        http::Method::POST,
        path,
        &[("idempotency-key", key)],
        Bytes::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_runs_its_request_once_and_replays_the_answer() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("kv", "/", "test-kv"),
            Svc::new("short", "/short", "test-kv")
                .set("policy = { idempotency = { ttl_secs = 1 } }"),
            Svc::new("slow", "/slow", "test-slow"),
        ],
        dir.path(),
    )
    .await?;
    let first = incr(&host, "/kv/c/incr", "order-1").await?;
    assert_eq!((first.status, first.text()), (200, "1".to_string()));
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = incr(&host, "/kv/c/incr", "order-1").await?;
    assert_eq!(
        (again.status, again.text()),
        (200, "1".to_string()),
        "the stored answer"
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("content-type"), first.header("content-type"));
    assert_eq!(host.get("/kv/c").await?.text(), "1", "ran once");
    assert_eq!(incr(&host, "/kv/c/incr", "order-2").await?.text(), "2");
    // Without a key every request runs.
    assert_eq!(host.post("/kv/c/incr", "").await?.text(), "3");

    let other = incr(&host, "/kv/d/incr", "order-1").await?;
    assert_eq!(other.status, 422, "{}", other.text());
    assert!(
        other.text().contains("different request"),
        "{}",
        other.text()
    );
    let bad = incr(&host, "/kv/c/incr", &"x".repeat(256)).await?;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(host.get("/kv/c").await?.text(), "3");

    // A retry while the first runs: 409.
    let (a, b) = tokio::join!(
        host.request(
            http::Method::POST,
            "/slow/x?ms=600",
            &[("idempotency-key", "s")],
            Bytes::new()
        ),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            host.request(
                http::Method::POST,
                "/slow/x?ms=600",
                &[("idempotency-key", "s")],
                Bytes::new(),
            )
            .await
        }
    );
    assert_eq!(a?.status, 200);
    let b = b?;
    assert_eq!(b.status, 409, "{}", b.text());

    // Expired: the request runs again.
    assert_eq!(incr(&host, "/short/kv/c/incr", "k").await?.text(), "1");
    assert_eq!(incr(&host, "/short/kv/c/incr", "k").await?.text(), "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(incr(&host, "/short/kv/c/incr", "k").await?.text(), "2");
    host.shutdown().await;
    Ok(())
}
