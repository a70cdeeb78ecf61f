//! Gateway policies over real HTTP: rate limits, circuit breakers with fallbacks,
//! retries within a budget, load shedding, the response cache, CORS, request ids and
//! trace context, transformation.

use crate::support::{Host, Svc, data_dir, metric, wasm};
use http::Method;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_then_recovers() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/", "test-echo")
            .set("policy = { rate_limit = { per_second = 2, burst = 2 } }")],
        dir.path(),
    )
    .await?;

    let first = host.get("/a").await?;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-limit"), Some("2"));
    assert_eq!(first.header("ratelimit-remaining"), Some("1"));
    assert_eq!(host.get("/a").await?.status, 200);
    let limited = host.get("/a").await?;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(
        limited.header("content-type"),
        Some("application/problem+json")
    );
    let retry_after: u64 = limited.header("retry-after").unwrap_or("x").parse()?;
    assert!((1..=1).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("ratelimit-reset"), Some("1"));
    assert_eq!(
        host.served("echo").await?,
        2,
        "the 429 never reached the service"
    );

    // One token comes back every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        host.get("/a").await?.status,
        200,
        "recovered after the refill"
    );
    assert_eq!(host.get("/a").await?.status, 429);

    let text = host.metrics().await?;
    assert_eq!(
        metric(
            &text,
            "microhost_rate_limited_total",
            &[("service", "echo")]
        ),
        2.0
    );
    host.shutdown().await;
    Ok(())
}

pub(crate) async fn breaker(host: &Host, service: &str) -> anyhow::Result<String> {
    let status = host
        .admin_get(&format!("/admin/services/{service}"))
        .await?;
    Ok(status["breaker"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_fails_fast_serves_the_fallback_half_opens_and_closes() -> anyhow::Result<()>
{
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/", "test-echo")
            .set("breaker = { failures = 3, open_ms = 400 }")
            .set(r#"policy = { fallback = { kind = "static", status = 200, body = '{"fallback":true}' } }"#)],
        dir.path(),
    )
    .await?;

    for _ in 0..3 {
        assert_eq!(host.post("/fail?status=500", "").await?.status, 500);
    }
    assert_eq!(breaker(&host, "echo").await?, "open");
    let served = host.served("echo").await?;
    assert_eq!(served, 3);

    // Open: a GET gets the fallback, other methods a 503 problem; neither reaches the service.
    let r = host.get("/ok").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"fallback":true}"#);
    assert_eq!(r.header("x-microhost-fallback"), Some("static"));
    let r = host.post("/ok", "").await?;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("circuit breaker is open")
    );
    assert!(r.header("retry-after").is_some());
    assert_eq!(host.served("echo").await?, served, "failed fast");
    let text = host.metrics().await?;
    assert_eq!(
        metric(&text, "microhost_breaker_state", &[("service", "echo")]),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "microhost_fallbacks_total",
            &[("service", "echo"), ("kind", "static")]
        ),
        1.0
    );

    // After the open period one probe goes through; a failed probe opens it again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(host.post("/probe?status=500", "").await?.status, 500);
    assert_eq!(breaker(&host, "echo").await?, "open");
    assert_eq!(host.post("/ok", "").await?.status, 503);

    // A good probe closes it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = host.get("/probe").await?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-microhost-fallback"),
        None,
        "served by the service"
    );
    assert_eq!(breaker(&host, "echo").await?, "closed");
    assert_eq!(host.post("/ok", "").await?.status, 200);
    // A 503 the service answers itself does not count against it.
    for _ in 0..5 {
        assert_eq!(host.post("/busy?status=503", "").await?.status, 503);
    }
    assert_eq!(breaker(&host, "echo").await?, "closed");
    host.shutdown().await;
    Ok(())
}

/// `fallback = { kind = "service" }`: while the breaker is open every request goes to the
/// alternative service (it answers, and says so), which gets it as the service would
/// have; once the breaker closes the service answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_fallback_sends_requests_to_the_alternative_while_open() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("echo", "/", "test-echo")
                .set("breaker = { failures = 3, open_ms = 400 }")
                .set(r#"policy = { fallback = { kind = "service", service = "replica" } }"#),
            Svc::new("replica", "/replica", "test-echo").config("greeting", "from the replica"),
        ],
        dir.path(),
    )
    .await?;
    let r = host.get("/item/7").await?;
    assert_eq!(
        (r.status, r.served_by().and_then(|s| s.split('@').next())),
        (200, Some("echo")),
        "{}",
        r.text()
    );
    for _ in 0..3 {
        assert_eq!(host.post("/fail?status=500", "").await?.status, 500);
    }
    assert_eq!(breaker(&host, "echo").await?, "open");
    let served = host.served("echo").await?;

    for (method, answered) in [(http::Method::GET, "GET"), (http::Method::POST, "POST")] {
        let r = host
            .send(
                method,
                &host.url("/item/7?x=1"),
                bytes::Bytes::from_static(b"{}"),
                None,
            )
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.served_by().and_then(|s| s.split('@').next()),
            Some("replica"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("x-microhost-fallback"), Some("service"));
        let body = r.json();
        assert_eq!(
            (body["method"].as_str(), body["path"].as_str()),
            (Some(answered), Some("/item/7"))
        );
        assert_eq!(body["query"], "x=1");
        assert_eq!(body["greeting"], "from the replica");
    }
    assert_eq!(
        host.served("echo").await?,
        served,
        "the open breaker kept them from echo"
    );
    assert_eq!(
        metric(
            &host.metrics().await?,
            "microhost_fallbacks_total",
            &[("service", "echo"), ("kind", "service")]
        ),
        2.0
    );

    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = host.get("/probe").await?;
    assert_eq!(
        (r.status, r.served_by().and_then(|s| s.split('@').next())),
        (200, Some("echo")),
        "closed again"
    );
    assert_eq!(r.header("x-microhost-fallback"), None);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_fallback_serves_the_last_good_response_while_open() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/", "test-echo")
            .set("breaker = { failures = 2, open_ms = 60000 }")
            .set(r#"policy = { cache = { ttl_ms = 50 }, fallback = { kind = "cached" } }"#)],
        dir.path(),
    )
    .await?;
    let good = host.get("/catalog").await?;
    assert_eq!(good.status, 200);
    assert_eq!(good.header("x-cache"), Some("MISS"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..2 {
        assert_eq!(host.get("/x?status=500").await?.status, 500);
    }
    let r = host.get("/catalog").await?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-cache"),
        Some("STALE"),
        "expired, but better than nothing"
    );
    assert_eq!(r.header("x-microhost-fallback"), Some("cached"));
    assert_eq!(r.body, good.body);
    // Nothing cached for this one: a problem.
    assert_eq!(host.get("/never-seen").await?.status, 503);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_only_idempotent_requests_within_the_budget() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/", "test-echo")
            .set("breaker = { failures = 1000, open_ms = 1000 }")
            .set("policy = { retry = { attempts = 3, budget_pct = 20, min_per_sec = 0, backoff_ms = 1 } }")],
        dir.path(),
    )
    .await?;

    // POST is not idempotent: one try each.
    for _ in 0..5 {
        assert_eq!(host.post("/x?status=503", "").await?.status, 503);
    }
    assert_eq!(host.served("echo").await?, 5, "POST was retried");
    // 400 is not retried either.
    assert_eq!(host.get("/x?status=400").await?.status, 400);
    assert_eq!(host.served("echo").await?, 6);

    // 50 failing GETs earn 20 % of a retry each: 10 retries in all, not 100.
    // (The POSTs and the 400 earned 1.2 more.)
    for _ in 0..50 {
        assert_eq!(host.get("/x?status=503").await?.status, 503);
    }
    let attempts = host.served("echo").await? - 6;
    assert!(
        (60..=62).contains(&attempts),
        "50 GETs took {attempts} attempts; the budget allows 50 + 10 (+1)"
    );
    let text = host.metrics().await?;
    let retries = metric(&text, "microhost_retries_total", &[("service", "echo")]);
    assert_eq!(retries as u64, attempts - 50);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queues_then_sheds_with_503() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("slow", "/", "test-slow")
            .set("policy = { concurrency = { max = 2, queue = 2, queue_timeout_ms = 10000 } }")],
        dir.path(),
    )
    .await?;
    let host = std::sync::Arc::new(host);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = host.get("/?ms=700").await?;
            anyhow::Ok((
                r.status,
                r.header("retry-after").map(String::from),
                started.elapsed(),
            ))
        }));
    }
    let mut ok = 0;
    let mut shed = 0;
    for task in tasks {
        let (status, retry_after, took) = task.await??;
        match status {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert!(took < Duration::from_millis(600), "shed slowly: {took:?}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        (ok, shed),
        (4, 4),
        "2 running + 2 queued served, the rest shed"
    );
    let text = host.metrics().await?;
    assert_eq!(
        metric(&text, "microhost_shed_total", &[("service", "slow")]),
        4.0
    );
    assert_eq!(
        metric(&text, "microhost_in_flight", &[("service", "slow")]),
        0.0
    );
    let status = host.admin_get("/admin/services/slow").await?;
    assert_eq!(
        status["policy"]["concurrency"],
        serde_json::json!({ "max": 2, "queue": 2, "running": 0, "queued": 0 })
    );
    if let Ok(host) = std::sync::Arc::try_unwrap(host) {
        host.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_responses_are_cached_and_never_served_fresh_across_versions() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/", "test-echo").set("policy = { cache = { ttl_ms = 60000 } }")],
        dir.path(),
    )
    .await?;
    let first = host.get("/items").await?;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let hit = host.get("/items").await?;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(
        hit.body, first.body,
        "the same response, request id and all"
    );
    assert!(hit.header("age").is_some());
    assert_ne!(hit.header("x-request-id"), first.header("x-request-id"));
    assert_eq!(host.served("echo").await?, 1);

    // The client asks for a fresh answer; the query is part of the key.
    let fresh = host
        .request(Method::GET, "/items", &[("cache-control", "no-cache")], "")
        .await?;
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    assert_eq!(
        host.get("/items?page=2").await?.header("x-cache"),
        Some("MISS")
    );
    // The service says not to keep it, or for how long.
    for _ in 0..2 {
        assert_eq!(
            host.get("/nostore?no_store=1").await?.header("x-cache"),
            Some("MISS")
        );
        assert_eq!(
            host.get("/zero?max_age=0").await?.header("x-cache"),
            Some("MISS")
        );
    }
    assert_eq!(
        host.get("/items?page=2").await?.header("x-cache"),
        Some("HIT")
    );
    // Only GET, only 200.
    assert_eq!(host.post("/items", "").await?.header("x-cache"), None);
    assert_eq!(
        host.get("/err?status=404").await?.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        host.get("/err?status=404").await?.header("x-cache"),
        Some("MISS")
    );
    let served = host.served("echo").await?;
    assert_eq!(served, 10);
    let status = host.admin_get("/admin/services/echo").await?;
    assert_eq!(
        status["policy"]["cache"]["entries"], 0,
        "the POST to /items dropped /items and /items?page=2"
    );

    // A new version: nothing of the old one is served fresh.
    let r = host
        .deploy("echo", "v2", std::fs::read(wasm("test-echo"))?)
        .await?;
    assert_eq!(r.status, 201, "{}", r.text());
    let after = host.get("/items").await?;
    assert_eq!(after.header("x-cache"), Some("MISS"));
    assert_eq!(after.served_by(), Some("echo@v2"));
    assert_eq!(host.get("/items").await?.header("x-cache"), Some("HIT"));
    // Credentials the host did not verify keep the shared cache out of it.
    for (name, value) in [
        ("cookie", "sid=alice"),
        ("authorization", "Basic YWxpY2U6cHc="),
    ] {
        let r = host
            .request(Method::GET, "/items", &[(name, value)], "")
            .await?;
        assert_eq!(r.header("x-cache"), None, "{name}");
        assert_eq!(r.served_by(), Some("echo@v2"));
    }
    // A write to the path makes its cached answers stale.
    assert_eq!(host.put("/items", "new").await?.status, 200);
    assert_eq!(host.get("/items").await?.header("x-cache"), Some("MISS"));
    let text = host.metrics().await?;
    assert_eq!(
        metric(
            &text,
            "microhost_cache_total",
            &[("service", "echo"), ("result", "hit")]
        ),
        3.0
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_and_responses_decorated() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/", "test-echo")
            .set("protected = true")
            .set(r#"public = ["GET /open"]"#)
            .set(r#"policy = { cors = { allow_origins = ["https://shop.example"], allow_credentials = true } }"#)],
        dir.path(),
    )
    .await?;
    // A preflight carries no token, and is answered by the gateway.
    let r = host
        .request(
            Method::OPTIONS,
            "/orders",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "Content-Type, Authorization",
                ),
            ],
            "",
        )
        .await?;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(
        r.header("access-control-allow-methods")
            .unwrap_or("")
            .contains("POST")
    );
    assert!(
        r.header("access-control-allow-headers")
            .unwrap_or("")
            .contains("authorization")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(r.header("x-request-id").is_some());
    for (origin, method, headers) in [
        ("https://evil.example", "POST", "content-type"),
        ("https://shop.example", "TRACE", "content-type"),
        ("https://shop.example", "POST", "x-secret"),
    ] {
        let r = host
            .request(
                Method::OPTIONS,
                "/orders",
                &[
                    ("origin", origin),
                    ("access-control-request-method", method),
                    ("access-control-request-headers", headers),
                ],
                "",
            )
            .await?;
        assert_eq!(r.status, 403, "{origin} {method} {headers}");
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    assert_eq!(
        host.served("echo").await?,
        0,
        "preflights never reach the service"
    );

    let r = host
        .request(
            Method::GET,
            "/open",
            &[("origin", "https://shop.example")],
            "",
        )
        .await?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert!(r.header("vary").unwrap_or("").contains("Origin"));
    let r = host
        .request(
            Method::GET,
            "/open",
            &[("origin", "https://evil.example")],
            "",
        )
        .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Without a token the protected route still says 401, with CORS headers so the
    // page can read it.
    let r = host
        .request(
            Method::GET,
            "/orders",
            &[("origin", "https://shop.example")],
            "",
        )
        .await?;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_trace_context_reach_the_component() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = host
        .request(
            Method::GET,
            "/t",
            &[("x-request-id", "req-42"), ("traceparent", incoming)],
            "",
        )
        .await?;
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-request-id"], "req-42");
    let traceparent = seen["traceparent"].as_str().unwrap_or_default();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the trace goes on"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "with the gateway's span as parent"
    );
    assert_eq!(parts[3], "01");

    // None given (or a broken one): both are made.
    let r = host
        .request(Method::GET, "/t", &[("traceparent", "00-zz-00-01")], "")
        .await?;
    let id = r.header("x-request-id").unwrap_or_default().to_string();
    assert_eq!(id.len(), 36, "{id}");
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-request-id"], id.as_str());
    let made = seen["traceparent"].as_str().unwrap_or_default();
    assert!(made.starts_with("00-") && made.len() == 55, "{made}");
    assert_ne!(
        host.get("/t").await?.header("x-request-id"),
        Some(id.as_str())
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_rewrite_paths_and_headers() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/public/echo", "test-echo").set(
            r#"policy = { transform = { strip_prefix = "/public", add_prefix = "/v2", request_headers = { set = { "x-env" = "test" }, remove = ["x-debug"] }, response_headers = { set = { "x-frame-options" = "DENY" }, remove = ["content-type"] } } }"#,
        )],
        dir.path(),
    )
    .await?;
    let r = host
        .request(
            Method::GET,
            "/public/echo/items?x=1",
            &[("x-debug", "1")],
            "",
        )
        .await?;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["path"], "/v2/echo/items");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["x-env"], "test");
    assert!(echo["headers"].get("x-debug").is_none());
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("content-type"), None);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_calls_carry_the_trace_and_pass_the_callees_policies() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("front", "/front", "test-echo").set(r#"calls = ["back"]"#),
            Svc::new("back", "/back", "test-echo").set("policy = { cache = { ttl_ms = 60000 } }"),
        ],
        dir.path(),
    )
    .await?;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for _ in 0..2 {
        let r = host
            .request(
                Method::GET,
                "/front?call=back",
                &[("x-request-id", "chain-1"), ("traceparent", incoming)],
                "",
            )
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let called = &r.json()["called"];
        assert_eq!(called["status"], 200, "{called}");
        assert_eq!(called["content_type"], "application/json", "{called}");
        let seen = &called["body"]["headers"];
        assert_eq!(seen["x-echo-hop"], "1", "the caller's own header: {seen}");
        assert_eq!(seen["x-request-id"], "chain-1", "{seen}");
        assert_eq!(seen["x-microhost-caller"], "front");
        let traceparent = seen["traceparent"].as_str().unwrap_or_default();
        assert_eq!(
            traceparent.split('-').nth(1),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{traceparent}"
        );
    }
    // The second call was answered from the callee's cache.
    assert_eq!(host.served("front").await?, 2);
    assert_eq!(host.served("back").await?, 1);
    host.shutdown().await;
    Ok(())
}

/// A call from another service meets the callee's own rules as an edge request would:
/// a token on its protected routes (the caller's identity counts, nothing else) and its
/// body limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_calls_meet_the_callees_token_rule_and_body_limit() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("front", "/front", "test-echo").set(r#"calls = ["guarded", "small"]"#),
            Svc::new("guarded", "/guarded", "test-echo").set("protected = true"),
            Svc::new("small", "/small", "test-echo").max_body_kib(1),
        ],
        dir.path(),
    )
    .await?;
    let called = |r: &crate::support::Resp| r.json()["called"].clone();
    let r = host.get("/front?call=guarded").await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = called(&r);
    assert_eq!(answer["status"], 401, "no token, no call: {answer}");
    assert!(
        answer["body"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("needs a verified token"),
        "{answer}"
    );
    let r = host.get("/front?call=small&call_body=100").await?;
    assert_eq!(called(&r)["status"], 200, "{}", r.text());
    let r = host.get("/front?call=small&call_body=2000").await?;
    assert_eq!(
        called(&r)["status"],
        413,
        "over the callee's 1 KiB: {}",
        r.text()
    );
    assert_eq!(
        host.served("guarded").await?,
        0,
        "refused before the callee ran"
    );
    host.shutdown().await;
    Ok(())
}
