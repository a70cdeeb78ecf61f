//! `fallback = { kind = "queue" }`: writes the service cannot take are stored, answered
//! `202` with a `Location`, and replayed once it recovers: in order, each once, their
//! results kept at the `Location`; across a restart too.

use crate::assert_eventually;
use crate::policies::breaker;
use crate::support::{Host, Resp, Svc, data_dir, metric};
use bytes::Bytes;
use http::Method;
use std::time::Duration;

fn queued_kv(breaker: &str) -> Svc {
    Svc::new("kv", "/", "test-kv")
        .set(breaker)
        .set(r#"policy = { fallback = { kind = "queue", keep_secs = 60, max_attempts = 2 } }"#)
}

/// Opens the breaker of `kv` with writes that fail after writing (nothing commits).
async fn open_breaker(host: &Host, failures: usize) -> anyhow::Result<()> {
    for _ in 0..failures {
        let r = host.put("/kv/broken?then=500", "x").await?;
        assert_eq!(r.status, 500, "{}", r.text());
    }
    assert_eq!(breaker(host, "kv").await?, "open");
    Ok(())
}

fn location(r: &Resp) -> String {
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("x-microhost-fallback"), Some("queue"));
    assert!(r.header("retry-after").is_some());
    let body = r.json();
    assert_eq!(body["status"], "queued");
    let location = r.header("location").expect("a Location").to_string();
    assert_eq!(body["location"], location.as_str());
    assert!(location.starts_with("/_microhost/queue/"), "{location}");
    location
}

/// Polls `location` until the queued request has its result.
async fn result(host: &Host, location: &str) -> anyhow::Result<Resp> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = host.get(location).await?;
        if r.status != 202 {
            return Ok(r);
        }
        assert_eq!(r.json()["status"], "queued");
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{location} still queued after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_are_replayed_once_each_in_order_after_the_breaker_closes()
-> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[queued_kv("breaker = { failures = 3, open_ms = 1500 }")],
        dir.path(),
    )
    .await?;
    open_breaker(&host, 3).await?;
    let served = host.served("kv").await?;

    // A read is not queued: it gets the open breaker's 503.
    let r = host.get("/kv/log").await?;
    assert_eq!(r.status, 503, "{}", r.text());

    let mut locations = Vec::new();
    for n in 1..=5 {
        let r = if n == 3 {
            host.request(
                Method::POST,
                "/kv/log/append",
                &[("idempotency-key", "third")],
                Bytes::from("3"),
            )
            .await?
        } else {
            host.post("/kv/log/append", n.to_string()).await?
        };
        locations.push(location(&r));
        if n == 3 {
            // A retry under the key gets the same Location, and queues nothing more.
            let again = host
                .request(
                    Method::POST,
                    "/kv/log/append",
                    &[("idempotency-key", "third")],
                    Bytes::from("3"),
                )
                .await?;
            assert_eq!(again.header("idempotent-replayed"), Some("true"));
            assert_eq!(location(&again), locations[2]);
            let other = host
                .request(
                    Method::POST,
                    "/kv/log/append",
                    &[("idempotency-key", "third")],
                    Bytes::from("not 3"),
                )
                .await?;
            assert_eq!(other.status, 422, "{}", other.text());
        }
    }
    // One that the service fails: after max_attempts its failure is its result.
    let failing = location(&host.put("/kv/never?then=500", "y").await?);
    assert_eq!(
        host.served("kv").await?,
        served,
        "nothing reached the service while the breaker was open"
    );
    assert_eq!(
        metric(
            &host.metrics().await?,
            "microhost_queued_requests",
            &[("service", "kv")]
        ),
        6.0,
        "five appends and the failing write wait"
    );
    let waiting = host.get(&locations[0]).await?;
    assert_eq!(waiting.status, 202, "{}", waiting.text());
    assert_eq!(waiting.json()["service"], "kv");

    // The breaker half-opens; the first replay is its probe, and closes it.
    for (n, location) in locations.iter().enumerate() {
        let r = result(&host, location).await?;
        assert_eq!(
            (r.status, r.text()),
            (200, (n + 1).to_string()),
            "{location}: the nth append saw n lines"
        );
        assert_eq!(r.header("x-microhost-fallback"), Some("queue"));
        assert!(
            r.served_by().is_some_and(|s| s.starts_with("kv@")),
            "{:?}",
            r.headers
        );
    }
    let log = host.get("/kv/log").await?;
    assert_eq!(
        (log.status, log.text()),
        (200, "1\n2\n3\n4\n5\n".to_string()),
        "each once, in order"
    );
    let r = result(&host, &failing).await?;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(
        host.get("/kv/never").await?.status,
        404,
        "a 5xx leaves no trace"
    );

    // Its result stays readable; an unknown id is a 404.
    assert_eq!(host.get(&locations[0]).await?.text(), "1");
    let r = host.get("/_microhost/queue/0123456789abcdef").await?;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        metric(
            &host.metrics().await?,
            "microhost_fallbacks_total",
            &[("service", "kv"), ("kind", "queue")]
        ),
        6.0
    );
    assert_eq!(
        metric(
            &host.metrics().await?,
            "microhost_queued_requests",
            &[("service", "kv")]
        ),
        0.0
    );
    assert_eq!(
        host.admin_get("/admin/services/kv").await?["policy"]["fallback"],
        "queue"
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_survive_a_restart_and_are_replayed_by_the_next_host() -> anyhow::Result<()> {
    let dir = data_dir();
    let services = [queued_kv("breaker = { failures = 2, open_ms = 600000 }")];
    let host = Host::start(&services, dir.path()).await?;
    open_breaker(&host, 2).await?;
    let mut locations = Vec::new();
    for body in ["a", "b", "c"] {
        locations.push(location(&host.post("/kv/log/append", body).await?));
    }
    host.shutdown().await;

    // The next host starts with a closed breaker and replays what was queued.
    let host = Host::start(&services, dir.path()).await?;
    for (n, location) in locations.iter().enumerate() {
        let r = result(&host, location).await?;
        assert_eq!((r.status, r.text()), (200, (n + 1).to_string()));
    }
    assert_eventually!(
        Duration::from_secs(5),
        host.get("/kv/log").await?.text() == "a\nb\nc\n",
        "the log holds each queued append once"
    );
    host.shutdown().await;
    Ok(())
}
