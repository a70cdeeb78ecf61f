//! The seed system end to end: the real `registry/microhost.toml` with the user, product,
//! order and notification services, driven over HTTP like a client would.

use crate::assert_eventually;
use crate::support::{Host, Resp, data_dir, wasm};
use bytes::Bytes;
use microhost::config::Manifest;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// The shipped manifest, on ephemeral ports; `product`'s breaker opens for `open_ms`.
async fn seed_host(data: &Path, open_ms: u64) -> anyhow::Result<Host> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../registry/microhost.toml");
    let mut manifest = Manifest::load(&path)?;
    for service in &mut manifest.services {
        if service.name == "product" {
            service.breaker.open_ms = open_ms;
        }
    }
    let mut config = crate::support::config(&[], data)?;
    config.manifest = manifest;
    Host::start_with(config).await
}

/// The shipped manifest's text, changed by `edit`, on ephemeral ports (component paths
/// still resolved against registry/).
pub(crate) async fn seed_host_from(
    data: &Path,
    edit: impl FnOnce(String) -> String,
) -> anyhow::Result<Host> {
    let registry = Path::new(env!("CARGO_MANIFEST_DIR")).join("../registry");
    let path = registry.join("microhost.toml");
    let text = edit(std::fs::read_to_string(&path)?);
    let mut config = crate::support::config(&[], data)?;
    config.manifest = Manifest::from_toml(&text, &path, registry)?;
    Host::start_with(config).await
}

async fn call(
    host: &Host,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Resp> {
    let mut request = http::Request::builder().method(method).uri(host.url(path));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let response = crate::support::client()
        .request(request.body(http_body_util::Full::new(body))?)
        .await?;
    let (parts, body) = response.into_parts();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: http_body_util::BodyExt::collect(body).await?.to_bytes(),
    })
}

pub(crate) async fn register_and_login(
    host: &Host,
    email: &str,
    name: &str,
) -> anyhow::Result<(String, String)> {
    let body =
        serde_json::json!({ "email": email, "password": "correct horse battery", "name": name });
    let r = call(
        host,
        http::Method::POST,
        "/api/users/register",
        None,
        Some(body),
    )
    .await?;
    anyhow::ensure!(
        r.status == 201,
        "register {email}: {} {}",
        r.status,
        r.text()
    );
    let id = r.json()["id"].as_str().unwrap_or_default().to_string();
    let body = serde_json::json!({ "email": email, "password": "correct horse battery" });
    let r = call(
        host,
        http::Method::POST,
        "/api/users/login",
        None,
        Some(body),
    )
    .await?;
    anyhow::ensure!(r.status == 200, "login {email}: {} {}", r.status, r.text());
    Ok((
        id,
        r.json()["token"].as_str().unwrap_or_default().to_string(),
    ))
}

async fn create_product(
    host: &Host,
    token: &str,
    name: &str,
    price: i64,
    stock: i64,
) -> anyhow::Result<String> {
    let body = serde_json::json!({ "name": name, "price_cents": price, "stock": stock });
    let r = call(
        host,
        http::Method::POST,
        "/api/products",
        Some(token),
        Some(body),
    )
    .await?;
    anyhow::ensure!(r.status == 201, "create {name}: {} {}", r.status, r.text());
    Ok(r.json()["id"].as_str().unwrap_or_default().to_string())
}

async fn order(host: &Host, token: &str, items: &[(&str, u32)]) -> anyhow::Result<Resp> {
    let items: Vec<_> = items
        .iter()
        .map(|(id, q)| serde_json::json!({ "product_id": id, "quantity": q }))
        .collect();
    call(
        host,
        http::Method::POST,
        "/api/orders",
        Some(token),
        Some(serde_json::json!({ "items": items })),
    )
    .await
}

async fn status_of(host: &Host, token: &str, order_id: &str) -> anyhow::Result<String> {
    let r = call(
        host,
        http::Method::GET,
        &format!("/api/orders/{order_id}"),
        Some(token),
        None,
    )
    .await?;
    Ok(r.json()["status"].as_str().unwrap_or_default().to_string())
}

async fn stock(host: &Host, product_id: &str) -> anyhow::Result<i64> {
    let r = host.get(&format!("/api/products/{product_id}")).await?;
    Ok(r.json()["stock"].as_i64().unwrap_or(-1))
}

/// Waits until `token`'s notifications hold the confirmation of `order_id`.
async fn confirmation_arrives(host: &Host, token: &str, order_id: &str) -> anyhow::Result<()> {
    assert_eventually!(
        WAIT,
        notifications(host, token)
            .await?
            .iter()
            .any(|n| n["kind"] == "order.confirmed" && n["order_id"] == order_id),
        "no confirmation notification for order {order_id}"
    );
    Ok(())
}

pub(crate) async fn notifications(
    host: &Host,
    token: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let r = call(
        host,
        http::Method::GET,
        "/api/notifications",
        Some(token),
        None,
    )
    .await?;
    anyhow::ensure!(r.status == 200, "notifications: {} {}", r.status, r.text());
    Ok(r.json()["items"].as_array().cloned().unwrap_or_default())
}

/// Every item of a list route, read in pages of `limit` by following `next`; checks that
/// each page holds `limit` items except the last, and that only the last has no `next`.
async fn all_pages(
    host: &Host,
    token: &str,
    path: &str,
    limit: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            None => format!("{path}?limit={limit}"),
            Some(next) => format!("{path}?limit={limit}&after={next}"),
        };
        let r = call(host, http::Method::GET, &url, Some(token), None).await?;
        anyhow::ensure!(r.status == 200, "{url}: {} {}", r.status, r.text());
        let page = r.json();
        let got = page["items"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(got.len() <= limit, "{url}: more than {limit} items: {page}");
        items.extend(got.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                anyhow::ensure!(
                    got.len() == limit,
                    "{url}: a short page with a next: {page}"
                );
                after = Some(next.to_string());
            }
            None => return Ok(items),
        }
    }
}

/// A bad `limit` on a list route is a 400 problem naming the parameter.
async fn assert_bad_limits(host: &Host, token: &str, path: &str) -> anyhow::Result<()> {
    for bad in ["0", "101", "ten"] {
        let r = call(
            host,
            http::Method::GET,
            &format!("{path}?limit={bad}"),
            Some(token),
            None,
        )
        .await?;
        assert_eq!(r.status, 400, "{path}?limit={bad}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
        assert!(detail.contains("\"limit\""), "{path}?limit={bad}: {detail}");
    }
    Ok(())
}

/// The state of `service`'s circuit breaker, from the admin catalog.
async fn breaker(host: &Host, service: &str) -> anyhow::Result<String> {
    let catalog = host.admin_get("/admin/services").await?;
    catalog["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == service))
        .and_then(|s| s["breaker"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no breaker state for {service} in {catalog}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_order_confirm_and_notify() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = seed_host(dir.path(), 5_000).await?;
    let (ada_id, ada) = register_and_login(&host, "ada@example.com", "Ada").await?;
    let (_, bob) = register_and_login(&host, "bob@example.com", "Bob").await?;

    // Registration and login errors.
    let dup = serde_json::json!({ "email": "ADA@example.com", "password": "something else", "name": "Ada 2" });
    let r = call(
        &host,
        http::Method::POST,
        "/api/users/register",
        None,
        Some(dup),
    )
    .await?;
    assert_eq!(r.status, 409, "{}", r.text());
    for bad in [
        serde_json::json!({ "email": "not-an-email", "password": "long enough", "name": "X" }),
        serde_json::json!({ "email": "x@example.com", "password": "short", "name": "X" }),
        serde_json::json!({ "email": "x@example.com", "password": "long enough" }),
    ] {
        let r = call(
            &host,
            http::Method::POST,
            "/api/users/register",
            None,
            Some(bad.clone()),
        )
        .await?;
        assert_eq!(r.status, 400, "{bad} → {}", r.text());
    }
    let wrong = serde_json::json!({ "email": "ada@example.com", "password": "wrong password" });
    let r = call(
        &host,
        http::Method::POST,
        "/api/users/login",
        None,
        Some(wrong),
    )
    .await?;
    assert_eq!(r.status, 401);
    let me = call(&host, http::Method::GET, "/api/users/me", Some(&ada), None).await?;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["email"], "ada@example.com");
    assert!(
        me.json().get("password_hash").is_none(),
        "the hash never leaves the service"
    );

    let lamp = create_product(&host, &ada, "Lamp", 1999, 5).await?;
    let desk = create_product(&host, &ada, "Desk", 15000, 2).await?;

    let r = order(&host, &ada, &[(&lamp, 2), (&desk, 1)]).await?;
    assert_eq!(r.status, 201, "{}", r.text());
    let placed = r.json();
    assert_eq!(placed["status"], "pending");
    assert_eq!(placed["total_cents"], 2 * 1999 + 15000);
    assert_eq!(placed["user_id"], ada_id.as_str());
    let order_id = placed["id"].as_str().unwrap_or_default().to_string();
    assert_eventually!(
        WAIT,
        status_of(&host, &ada, &order_id).await? == "confirmed",
        "order not confirmed"
    );
    assert_eq!(stock(&host, &lamp).await?, 3);
    assert_eq!(stock(&host, &desk).await?, 1);
    confirmation_arrives(&host, &ada, &order_id).await?;
    let kinds: Vec<String> = notifications(&host, &ada)
        .await?
        .iter()
        .filter_map(|n| n["kind"].as_str().map(str::to_string))
        .collect();
    assert!(kinds.contains(&"user.registered".to_string()), "{kinds:?}");

    // More than the stock: cancelled, stock unchanged (all or nothing).
    let r = order(&host, &ada, &[(&lamp, 1), (&desk, 5)]).await?;
    assert_eq!(r.status, 201, "{}", r.text());
    let too_many = r.json()["id"].as_str().unwrap_or_default().to_string();
    assert_eventually!(
        WAIT,
        status_of(&host, &ada, &too_many).await? == "cancelled",
        "order not cancelled"
    );
    assert_eq!(stock(&host, &lamp).await?, 3);
    assert_eq!(stock(&host, &desk).await?, 1);
    assert_eventually!(
        WAIT,
        notifications(&host, &ada)
            .await?
            .iter()
            .any(|n| n["kind"] == "order.cancelled"),
        "no cancellation notification"
    );
    let r = order(&host, &ada, &[("no-such-product", 1)]).await?;
    assert_eq!(r.status, 400, "{}", r.text());

    // Bob sees none of Ada's orders or notifications.
    let r = call(
        &host,
        http::Method::GET,
        &format!("/api/orders/{order_id}"),
        Some(&bob),
        None,
    )
    .await?;
    assert_eq!(r.status, 404);
    let r = call(&host, http::Method::GET, "/api/orders", Some(&bob), None).await?;
    assert_eq!(r.json()["items"], serde_json::json!([]));
    let bobs = notifications(&host, &bob).await?;
    assert!(
        bobs.iter().all(|n| n["kind"] == "user.registered"),
        "{bobs:?}"
    );
    let r = call(&host, http::Method::GET, "/api/orders", Some(&ada), None).await?;
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(2));
    assert!(r.json()["next"].is_null(), "{}", r.text());

    // Lists come in pages: `limit` items, and `next` leads to the rest, oldest first.
    let r = call(
        &host,
        http::Method::GET,
        "/api/orders?limit=1",
        Some(&ada),
        None,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    assert_eq!(first["items"].as_array().map(Vec::len), Some(1), "{first}");
    assert_eq!(first["items"][0]["id"], order_id.as_str(), "oldest first");
    assert_eq!(first["next"], order_id.as_str(), "{first}");
    let r = call(
        &host,
        http::Method::GET,
        &format!("/api/orders?limit=1&after={order_id}"),
        Some(&ada),
        None,
    )
    .await?;
    let second = r.json();
    assert_eq!(
        second["items"].as_array().map(Vec::len),
        Some(1),
        "{second}"
    );
    assert_eq!(second["items"][0]["id"], too_many.as_str());
    assert!(second["next"].is_null(), "{second}");
    let ids = |items: &[serde_json::Value]| -> Vec<String> {
        items
            .iter()
            .filter_map(|n| n["id"].as_str().map(str::to_string))
            .collect()
    };
    let everything = notifications(&host, &ada).await?;
    assert!(everything.len() >= 3, "{everything:?}");
    let paged = all_pages(&host, &ada, "/api/notifications", 2).await?;
    assert_eq!(ids(&paged), ids(&everything));
    let paged = all_pages(&host, &ada, "/api/orders", 1).await?;
    assert_eq!(ids(&paged), [order_id.clone(), too_many.clone()]);
    assert_bad_limits(&host, &ada, "/api/orders").await?;
    assert_bad_limits(&host, &ada, "/api/notifications").await?;

    // No token, a bad token, a forged identity header: 401 everywhere protected.
    let mut forged = ada.clone().into_bytes();
    let n = forged.len();
    forged[n - 3] = if forged[n - 3] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged)?;
    for (method, path) in [
        (http::Method::GET, "/api/orders"),
        (http::Method::POST, "/api/orders"),
        (http::Method::GET, "/api/notifications"),
        (http::Method::GET, "/api/users/me"),
        (http::Method::POST, "/api/products"),
    ] {
        for token in [None, Some("garbage"), Some(forged.as_str())] {
            let r = call(
                &host,
                method.clone(),
                path,
                token,
                Some(serde_json::json!({})),
            )
            .await?;
            assert_eq!(
                r.status,
                401,
                "{method} {path} with {token:?}: {}",
                r.text()
            );
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    let spoof = http::Request::get(host.url("/api/orders"))
        .header("x-microhost-subject", ada_id.as_str())
        .header("authorization", format!("Bearer {bob}"))
        .body(http_body_util::Full::new(Bytes::new()))?;
    let r = crate::support::client().request(spoof).await?;
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await?
        .to_bytes();
    let items: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(
        items["items"],
        serde_json::json!([]),
        "a forged subject header was believed"
    );
    // Another scheme is no bearer token: refused on a protected route, passed through on
    // a public one.
    let basic = http::Request::get(host.url("/api/orders"))
        .header("authorization", "Basic YWRhOnNlY3JldA==")
        .body(http_body_util::Full::new(Bytes::new()))?;
    assert_eq!(crate::support::client().request(basic).await?.status(), 401);
    let basic = http::Request::get(host.url("/api/products"))
        .header("authorization", "Basic YWRhOnNlY3JldA==")
        .body(http_body_util::Full::new(Bytes::new()))?;
    assert_eq!(crate::support::client().request(basic).await?.status(), 200);
    // The internal lookup is not reachable from the edge.
    let r = call(
        &host,
        http::Method::GET,
        &format!("/internal/users/{ada_id}"),
        Some(&ada),
        None,
    )
    .await?;
    assert_eq!(r.status, 404);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_product_service_opens_the_breaker_and_recovers() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = seed_host(dir.path(), 1_000).await?;
    let (_, ada) = register_and_login(&host, "ada@example.com", "Ada").await?;
    let lamp = create_product(&host, &ada, "Lamp", 1999, 50).await?;
    assert_eq!(order(&host, &ada, &[(&lamp, 1)]).await?.status, 201);

    // Product breaks: a trapping version is deployed.
    let r = host
        .deploy("product", "broken", std::fs::read(wasm("test-trap"))?)
        .await?;
    assert_eq!(r.status, 201, "{}", r.text());
    let mut fast_fails = 0;
    for i in 0..8 {
        let started = Instant::now();
        let r = order(&host, &ada, &[(&lamp, 1)]).await?;
        assert_eq!(r.status, 503, "order {i}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
        assert!(
            detail.contains("product service is unavailable"),
            "{detail}"
        );
        if detail.contains("circuit breaker is open") {
            fast_fails += 1;
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "not fast: {:?}",
                started.elapsed()
            );
        }
    }
    // failures = 3 in the manifest: the rest failed fast.
    assert!(
        fast_fails >= 5,
        "the breaker did not open ({fast_fails} fast failures)"
    );
    assert_eq!(breaker(&host, "product").await?, "open");
    // The other services keep working.
    assert_eq!(
        call(&host, http::Method::GET, "/api/users/me", Some(&ada), None)
            .await?
            .status,
        200
    );
    assert_eq!(
        call(
            &host,
            http::Method::GET,
            "/api/notifications",
            Some(&ada),
            None
        )
        .await?
        .status,
        200
    );
    assert_eq!(
        call(&host, http::Method::GET, "/api/orders", Some(&ada), None)
            .await?
            .status,
        200
    );

    // The good version comes back; after the open period a probe closes the breaker.
    let good = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../registry/product/0.1.0.wasm"),
    )?;
    let r = host.deploy("product", "0.1.1", good).await?;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eventually!(
        WAIT,
        order(&host, &ada, &[(&lamp, 1)]).await?.status == 201,
        "orders did not recover"
    );
    assert_eq!(breaker(&host, "product").await?, "closed");
    let left = stock(&host, &lamp).await?;
    assert!(
        (47..=49).contains(&left),
        "state survived the broken version: stock {left}"
    );
    host.shutdown().await;
    Ok(())
}

async fn analytics(host: &Host, token: &str) -> anyhow::Result<serde_json::Value> {
    let r = call(
        host,
        http::Method::GET,
        "/api/analytics/summary",
        Some(token),
        None,
    )
    .await?;
    anyhow::ensure!(r.status == 200, "analytics: {} {}", r.status, r.text());
    Ok(r.json())
}

/// The Python analytics service keeps a read model of the flow (the JavaScript
/// notification service serves it at the same time), and replaying every topic it
/// subscribes to from offset 0 rebuilds nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_counts_the_flow_and_a_replay_from_zero_changes_nothing() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = seed_host(dir.path(), 5_000).await?;
    let (_, ada) = register_and_login(&host, "ada@example.com", "Ada").await?;
    let (_, bob) = register_and_login(&host, "bob@example.com", "Bob").await?;
    let r = call(
        &host,
        http::Method::GET,
        "/api/analytics/summary",
        None,
        None,
    )
    .await?;
    assert_eq!(r.status, 401, "protected: {}", r.text());

    let lamp = create_product(&host, &ada, "Lamp", 1999, 5).await?;
    let desk = create_product(&host, &ada, "Desk", 15000, 1).await?;
    let mut ids = Vec::new();
    // Confirmed (2 lamps and a desk), cancelled (a desk too many), confirmed (a lamp).
    for (token, items) in [
        (&ada, vec![(lamp.as_str(), 2), (desk.as_str(), 1)]),
        (&bob, vec![(desk.as_str(), 1)]),
        (&bob, vec![(lamp.as_str(), 1)]),
    ] {
        let r = order(&host, token, &items).await?;
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push((
            token.clone(),
            r.json()["id"].as_str().unwrap_or_default().to_string(),
        ));
    }
    for (token, id) in &ids {
        assert_eventually!(
            WAIT,
            status_of(&host, token, id).await? != "pending",
            "order {id} still pending"
        );
    }
    let expected = serde_json::json!({
        "orders_created": 3, "orders_confirmed": 2, "orders_cancelled": 1,
        "orders_pending": 0, "users_registered": 2,
        "revenue_cents": 2 * 1999 + 15000 + 1999,
    });
    let matches = |summary: &serde_json::Value| {
        expected
            .as_object()
            .is_some_and(|e| e.iter().all(|(k, v)| summary[k] == *v))
    };
    assert_eventually!(
        WAIT,
        matches(&analytics(&host, &ada).await?),
        "analytics never showed {expected}"
    );
    let summary = analytics(&host, &ada).await?;
    let top = call(
        &host,
        http::Method::GET,
        "/api/analytics/top-products?limit=10",
        Some(&ada),
        None,
    )
    .await?;
    assert_eq!(top.status, 200, "{}", top.text());
    assert_eq!(
        top.json()["items"][0]["product_id"],
        lamp.as_str(),
        "{}",
        top.text()
    );
    assert_eq!(top.json()["items"][0]["quantity"], 3, "{}", top.text());
    assert_eq!(
        top.json()["items"][1]["quantity"],
        1,
        "the cancelled desk is not counted"
    );
    let daily = call(
        &host,
        http::Method::GET,
        "/api/analytics/daily",
        Some(&ada),
        None,
    )
    .await?;
    assert_eq!(daily.status, 200, "{}", daily.text());
    assert_eq!(
        daily.json()["items"][0]["revenue_cents"],
        expected["revenue_cents"]
    );

    // Event sourcing: every event again, from the start of each log.
    let topics = [
        "order.created",
        "order.confirmed",
        "order.cancelled",
        "user.registered",
    ];
    for topic in topics {
        let r = host
            .admin_post(&format!(
                "/admin/subscriptions/analytics/{topic}/replay?from=0"
            ))
            .await?;
        assert_eq!(r.status, 200, "replay {topic}: {}", r.text());
    }
    for topic in topics {
        let length = host.admin_get("/admin/topics").await?["topics"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["topic"] == topic))
            .and_then(|t| t["length"].as_u64())
            .unwrap_or(0);
        assert!(length > 0, "{topic} is empty");
        assert_eventually!(
            WAIT,
            host.running.cursor(topic, "analytics")? == length,
            "analytics did not get through {topic} again"
        );
    }
    assert_eq!(
        analytics(&host, &ada).await?,
        summary,
        "a replay counted events twice"
    );
    Ok(())
}

/// The spans an in-process OTLP/HTTP receiver got (`/v1/traces`, protobuf).
#[derive(Default)]
struct Collector {
    spans: parking_lot::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>,
    service_names: parking_lot::Mutex<Vec<String>>,
}

async fn start_collector() -> anyhow::Result<(std::net::SocketAddr, std::sync::Arc<Collector>)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let collector = std::sync::Arc::new(Collector::default());
    let state = collector.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                assert_eq!(
                    headers.get("content-type").and_then(|v| v.to_str().ok()),
                    Some("application/x-protobuf")
                );
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for resource in request.resource_spans {
                    if let Some(resource) = &resource.resource {
                        for attribute in &resource.attributes {
                            if attribute.key == "service.name" {
                                state.service_names.lock().push(format!("{:?}", attribute.value));
                            }
                        }
                    }
                    for scope in resource.scope_spans {
                        state.spans.lock().extend(scope.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::default()
                        .encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, collector))
}

fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(n) => n.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// One order's trace, exported with OTLP/HTTP to a receiver in the test: edge → order
/// → its calls to user and product → publish order.created → product's delivery →
/// publish stock.reserved → order's delivery → publish order.confirmed →
/// notification's delivery, every span the child of the one before (deliveries of the
/// publish whose context the event carried), all under the one edge span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_from_the_edge_to_the_notification() -> anyhow::Result<()> {
    use opentelemetry_proto::tonic::trace::v1::Span;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let dir = data_dir();
    let (addr, collector) = start_collector().await?;
    let host = seed_host_from(dir.path(), |text| {
        format!(
            "{text}\n[telemetry]\nendpoint = \"http://{addr}\"\nprotocol = \"http/protobuf\"\n\
             service_name = \"shop\"\n"
        )
    })
    .await?;

    let (_, ada) = register_and_login(&host, "ada@example.com", "Ada").await?;
    let lamp = create_product(&host, &ada, "Lamp", 1999, 5).await?;
    let r = order(&host, &ada, &[(&lamp, 2)]).await?;
    assert_eq!(r.status, 201, "{}", r.text());
    let order_id = r.json()["id"].as_str().unwrap_or_default().to_string();
    confirmation_arrives(&host, &ada, &order_id).await?;
    // Shutting down flushes the exporter.
    host.shutdown().await;

    let spans = collector.spans.lock().clone();
    assert!(
        collector
            .service_names
            .lock()
            .iter()
            .all(|n| n.contains("shop")),
        "{:?}",
        collector.service_names.lock()
    );
    let edge = spans
        .iter()
        .find(|s| {
            s.name == "POST /api/orders"
                && attribute(s, "http.response.status_code").as_deref() == Some("201")
        })
        .unwrap_or_else(|| panic!("no edge span for the order among {} spans", spans.len()));
    assert_eq!(edge.kind, SpanKind::Server as i32);
    assert!(
        edge.parent_span_id.is_empty(),
        "the client sent no trace context"
    );
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == edge.trace_id)
        .collect();
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    // Every span but the edge's hangs from another span of the trace.
    for span in &trace {
        if span.span_id != edge.span_id {
            assert!(
                trace.iter().any(|p| p.span_id == span.parent_span_id),
                "{} has no parent in the trace: {names:?}",
                span.name
            );
        }
    }
    let child = |parent: &Span, name: &str, check: &dyn Fn(&Span) -> bool| -> Span {
        trace
            .iter()
            .find(|s| s.parent_span_id == parent.span_id && s.name == name && check(s))
            .map(|s| (*s).clone())
            .unwrap_or_else(|| panic!("no {name:?} under {:?}: {names:?}", parent.name))
    };
    let any = |_: &Span| true;
    let dispatch = child(edge, "dispatch order", &any);
    assert_eq!(
        attribute(&dispatch, "microhost.service").as_deref(),
        Some("order")
    );
    assert!(attribute(&dispatch, "microhost.version").is_some());
    assert_eq!(
        attribute(&dispatch, "microhost.canary").as_deref(),
        Some("false")
    );
    let invoke = child(&dispatch, "invoke order", &any);
    child(&dispatch, "commit", &|s| {
        attribute(s, "microhost.events").as_deref() == Some("1")
    });
    for callee in ["user", "product"] {
        let call = trace
            .iter()
            .find(|s| {
                s.parent_span_id == invoke.span_id
                    && s.kind == SpanKind::Client as i32
                    && attribute(s, "server.address").as_deref()
                        == Some(&format!("{callee}.internal"))
            })
            .unwrap_or_else(|| panic!("no call to {callee} under the order: {names:?}"));
        let served = child(call, &format!("dispatch {callee}"), &any);
        child(&served, &format!("invoke {callee}"), &any);
    }
    // The bus: each delivery is the child of the publish whose context its event carried.
    let publish = child(&invoke, "publish order.created", &any);
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    let consumer = |group: &'static str| {
        move |s: &Span| attribute(s, "messaging.consumer.group.name").as_deref() == Some(group)
    };
    let at_product = child(&publish, "deliver order.created", &consumer("product"));
    assert_eq!(at_product.kind, SpanKind::Consumer as i32);
    let reserving = child(&at_product, "invoke product", &any);
    child(&at_product, "commit", &|s| {
        attribute(s, "microhost.acknowledges").as_deref() == Some("true")
    });
    let reserved = child(&reserving, "publish stock.reserved", &any);
    let at_order = child(&reserved, "deliver stock.reserved", &consumer("order"));
    let confirming = child(&at_order, "invoke order", &any);
    let confirmed = child(&confirming, "publish order.confirmed", &any);
    let at_notification = child(
        &confirmed,
        "deliver order.confirmed",
        &consumer("notification"),
    );
    child(&at_notification, "invoke notification", &any);
    Ok(())
}

/// The seed with product's policy set to `policy`, its breaker opening after 3 failures
/// for 1 s, and (for the service fallback) a read-only `catalogue`: another instance of
/// the product component on its own route and keyspace.
async fn seed_with_product_policy(data: &Path, policy: &str) -> anyhow::Result<Host> {
    seed_host_from(data, |text| {
        let text = text.replacen(
            "breaker = { failures = 3, open_ms = 5000 }\n",
            &format!("breaker = {{ failures = 3, open_ms = 1000 }}\npolicy = {policy}\n"),
            1,
        );
        format!(
            "{text}\n[[service]]\nname = \"catalogue\"\nroute = \"/api/catalogue\"\n\
             component = {{ path = \"product/0.1.0.wasm\", version = \"0.1.0\" }}\n\
             config = {{ default_page_size = \"20\" }}\n"
        )
    })
    .await
}

/// Deploys a trapping version of product and fails `path` (nothing cached) until its
/// breaker is open.
async fn break_product(host: &Host, path: &str) -> anyhow::Result<()> {
    let r = host
        .deploy("product", "broken", std::fs::read(wasm("test-trap"))?)
        .await?;
    assert_eq!(r.status, 201, "{}", r.text());
    for _ in 0..3 {
        // The trap, or already the fallback (it answers failed GETs too).
        let r = host.get(path).await?;
        assert!(
            r.status == 502 || r.header("x-microhost-fallback").is_some(),
            "{} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(breaker(host, "product").await?, "open");
    Ok(())
}

/// Product's breaker open, with each fallback kind in turn: the last good answer
/// (`cached`), a fixed one (`static`), another service (`service`), and for writes a
/// durable queue on order's route (`queue`: orders that cannot reach product get 202,
/// then once product recovers each is placed once, in order, its result at its
/// Location).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_fallbacks_answer_while_its_breaker_is_open() -> anyhow::Result<()> {
    // cached
    let dir = data_dir();
    let host = seed_with_product_policy(
        dir.path(),
        r#"{ cache = { ttl_ms = 100 }, fallback = { kind = "cached" } }"#,
    )
    .await?;
    let (_, ada) = register_and_login(&host, "ada@example.com", "Ada").await?;
    let lamp = create_product(&host, &ada, "Lamp", 1999, 5).await?;
    let good = host.get(&format!("/api/products/{lamp}")).await?;
    assert_eq!(good.status, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    break_product(&host, "/api/products/none").await?;
    let r = host.get(&format!("/api/products/{lamp}")).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-microhost-fallback"), Some("cached"));
    assert_eq!(r.header("x-cache"), Some("STALE"));
    assert_eq!(r.json()["name"], "Lamp");
    assert_eq!(
        r.served_by(),
        Some("product@0.1.0"),
        "the last good version's answer, after a bad deploy"
    );
    host.shutdown().await;

    // static
    let dir = data_dir();
    let host = seed_with_product_policy(
        dir.path(),
        r#"{ fallback = { kind = "static", body = '{"items":[],"next":null,"degraded":true}' } }"#,
    )
    .await?;
    break_product(&host, "/api/products/none").await?;
    let r = host.get("/api/products").await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-microhost-fallback"), Some("static"));
    assert_eq!(r.json()["degraded"], true);
    host.shutdown().await;

    // service: the catalogue answers, and says so
    let dir = data_dir();
    let host = seed_with_product_policy(
        dir.path(),
        r#"{ fallback = { kind = "service", service = "catalogue" } }"#,
    )
    .await?;
    break_product(&host, "/api/products/none").await?;
    let r = host.get("/api/products").await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-microhost-fallback"), Some("service"));
    assert!(
        r.served_by().is_some_and(|s| s.starts_with("catalogue@")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.json()["items"], serde_json::json!([]));
    host.shutdown().await;

    // queue, on order's route: orders that cannot reach product wait, then each is
    // placed once, in order
    let dir = data_dir();
    let host = seed_host_from(dir.path(), |text| {
        text.replacen(
            "breaker = { failures = 3, open_ms = 5000 }\n",
            "breaker = { failures = 3, open_ms = 1000 }\n",
            1,
        )
        .replacen(
            "calls = [\"user\", \"product\"]\n",
            "calls = [\"user\", \"product\"]\npolicy = { fallback = { kind = \"queue\" } }\n",
            1,
        )
    })
    .await?;
    let (_, ada) = register_and_login(&host, "ada@example.com", "Ada").await?;
    let lamp = create_product(&host, &ada, "Lamp", 1999, 10).await?;
    break_product(&host, "/api/products/none").await?;
    let mut locations = Vec::new();
    for quantity in 1..=3 {
        let r = order(&host, &ada, &[(&lamp, quantity)]).await?;
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(r.header("x-microhost-fallback"), Some("queue"));
        locations.push(r.header("location").unwrap_or_default().to_string());
    }
    let listed = call(&host, http::Method::GET, "/api/orders", Some(&ada), None).await?;
    assert_eq!(
        listed.json()["items"],
        serde_json::json!([]),
        "none placed yet"
    );
    let good = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../registry/product/0.1.0.wasm"),
    )?;
    let r = host.deploy("product", "0.1.1", good).await?;
    assert_eq!(r.status, 201, "{}", r.text());
    let mut ids = Vec::new();
    for (location, quantity) in locations.iter().zip(1..=3) {
        let poll = || call(&host, http::Method::GET, location, Some(&ada), None);
        let mut result = poll().await?;
        let deadline = Instant::now() + WAIT;
        while result.status == 202 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            result = poll().await?;
        }
        assert_eq!(result.status, 201, "{location}: {}", result.text());
        assert_eq!(result.json()["items"][0]["quantity"], quantity);
        ids.push(result.json()["id"].as_str().unwrap_or_default().to_string());
    }
    for id in &ids {
        assert_eventually!(
            WAIT,
            status_of(&host, &ada, id).await? == "confirmed",
            "queued order {id} not confirmed"
        );
    }
    let listed = call(&host, http::Method::GET, "/api/orders", Some(&ada), None).await?;
    let listed_ids: Vec<String> = listed.json()["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|o| o["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed_ids, ids, "each once, in order");
    assert_eq!(stock(&host, &lamp).await?, 10 - 6, "each reserved once");
    // Queued under ada's token, the result answers to ada only.
    let r = host.get(&locations[0]).await?;
    assert_eq!(r.status, 404, "{}", r.text());
    let (_, bob) = register_and_login(&host, "bob@example.com", "Bob").await?;
    let r = call(&host, http::Method::GET, &locations[0], Some(&bob), None).await?;
    assert_eq!(r.status, 404, "{}", r.text());
    host.shutdown().await;
    Ok(())
}
