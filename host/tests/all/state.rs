//! Key-value state: product CRUD, persistence across restart, keyspace isolation, and
//! the invocation as a unit of work.

use crate::support::{Host, Svc, data_dir, wasm};

fn product() -> Svc {
    Svc::new("product", "/api/products", "product").config("default_page_size", "2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_create_get_list_survive_a_restart() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[product()], dir.path()).await?;

    let mut ids = Vec::new();
    for (name, price) in [("Lamp", 1999), ("Desk", 15000), ("Chair", 4900)] {
        let body = serde_json::json!({ "name": name, "price_cents": price, "stock": 3 });
        let r = host.post("/api/products", body.to_string()).await?;
        assert_eq!(r.status, 201, "{}", r.text());
        let created = r.json();
        assert_eq!(created["name"], name);
        let id = created["id"].as_str().unwrap_or_default().to_string();
        assert!(!id.is_empty());
        assert_eq!(
            r.header("location"),
            Some(format!("/api/products/{id}").as_str())
        );
        ids.push(id);
    }
    let r = host.get(&format!("/api/products/{}", ids[1])).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["price_cents"], 15000);

    // Pages of 2 (the configured default), in creation order.
    let page1 = host.get("/api/products").await?.json();
    let names: Vec<&str> = page1["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["Lamp", "Desk"]);
    let next = page1["next"].as_str().unwrap_or_default().to_string();
    let page2 = host
        .get(&format!("/api/products?after={next}"))
        .await?
        .json();
    assert_eq!(page2["items"][0]["name"], "Chair");
    assert!(page2["next"].is_null());

    // Validation failures are 400 problems.
    for bad in [
        r#"{"name":"","price_cents":1,"stock":1}"#,
        r#"{"name":"x","price_cents":-1,"stock":1}"#,
        r#"{"name":"x","price_cents":1}"#,
        r#"{"name":"x","price_cents":1,"stock":1,"extra":true}"#,
        r#"not json"#,
    ] {
        let r = host.post("/api/products", bad).await?;
        assert_eq!(r.status, 400, "{bad} → {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(host.get("/api/products/unknown").await?.status, 404);
    assert_eq!(host.get("/api/products?limit=0").await?.status, 400);

    host.shutdown().await;
    let host = Host::start(&[product()], dir.path()).await?;
    for id in &ids {
        let r = host.get(&format!("/api/products/{id}")).await?;
        assert_eq!(r.status, 200, "product {id} lost across restart");
    }
    let all = host.get("/api/products?limit=100").await?.json();
    assert_eq!(all["items"].as_array().map(Vec::len), Some(3));
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_cannot_see_each_others_keys() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("alpha", "/a", "test-kv"),
            Svc::new("beta", "/b", "test-kv"),
        ],
        dir.path(),
    )
    .await?;

    assert_eq!(host.put("/a/kv/secret", "alpha's").await?.status, 204);
    assert_eq!(host.get("/a/kv/secret").await?.text(), "alpha's");
    assert_eq!(
        host.get("/b/kv/secret").await?.status,
        404,
        "beta read alpha's key"
    );

    assert_eq!(host.put("/b/kv/secret", "beta's").await?.status, 204);
    assert_eq!(
        host.get("/a/kv/secret").await?.text(),
        "alpha's",
        "beta overwrote alpha's key"
    );
    assert_eq!(host.get("/b/kv/secret").await?.text(), "beta's");

    assert_eq!(host.put("/a/kv/only-alpha", "1").await?.status, 204);
    let beta_keys = host.get("/b/kv").await?.json();
    assert_eq!(beta_keys["keys"], serde_json::json!(["secret"]));
    let alpha_keys = host.get("/a/kv").await?.json();
    assert_eq!(
        alpha_keys["keys"],
        serde_json::json!(["only-alpha", "secret"])
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_only_when_the_invocation_succeeds() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("kv", "/", "test-kv")], dir.path()).await?;

    // Reads in the invocation see its own writes.
    let r = host.put("/kv/mine?then=read", "visible to myself").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "visible to myself");
    assert_eq!(host.get("/kv/mine").await?.text(), "visible to myself");

    // A 5xx answer or a trap after the write leaves nothing behind.
    let r = host.put("/kv/after-500?then=500", "x").await?;
    assert_eq!(r.status, 500);
    assert_eq!(host.get("/kv/after-500").await?.status, 404);
    let r = host.put("/kv/after-trap?then=trap", "x").await?;
    assert_eq!(r.status, 502);
    assert_eq!(host.get("/kv/after-trap").await?.status, 404);
    // ... and does not undo what was committed before.
    let r = host.put("/kv/mine?then=500", "overwritten?").await?;
    assert_eq!(r.status, 500);
    assert_eq!(host.get("/kv/mine").await?.text(), "visible to myself");
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_manifest_is_valid_and_its_components_are_built() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../registry/microhost.toml");
    let manifest = microhost::config::Manifest::load(&path)?;
    assert!(manifest.services.iter().any(|s| s.name == "product"));
    for service in &manifest.services {
        let file = manifest.component_path(service);
        assert!(
            file.exists(),
            "{file:?} is missing: `just build-components` publishes it"
        );
    }
    // The published product is the one built from components/product.
    let published = std::fs::read(manifest.base_dir.join("product/0.1.0.wasm"))?;
    assert_eq!(published, std::fs::read(wasm("product"))?);
    Ok(())
}

/// 8 clients each add one to `/kv/counter` 10 times, at the same time.
async fn increment_concurrently(host: &std::sync::Arc<Host>) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    for _ in 0..8 {
        let host = host.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..10 {
                let r = host.post("/kv/counter/incr", "").await?;
                anyhow::ensure!(r.status == 200, "increment: {} {}", r.status, r.text());
            }
            Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_writes_lose_no_update() -> anyhow::Result<()> {
    let dir = data_dir();
    let host =
        std::sync::Arc::new(Host::start(&[Svc::new("kv", "/", "test-kv")], dir.path()).await?);
    increment_concurrently(&host).await?;
    // Each increment read the counter and wrote it back; a conflicting commit reran the
    // request on fresh state instead of overwriting a concurrent increment.
    assert_eq!(host.get("/kv/counter").await?.text(), "80");
    let host =
        std::sync::Arc::try_unwrap(host).map_err(|_| anyhow::anyhow!("host still shared"))?;
    host.shutdown().await;
    Ok(())
}

/// Instance reuse (opt-in) keeps each request's effects its own: a failed request's
/// writes never reach the next request on the same instance, a trapped instance is not
/// reused, and concurrent read-modify-writes still lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_instances_keep_effects_per_request() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = std::sync::Arc::new(
        Host::start(
            &[Svc::new("kv", "/", "test-kv").instance_reuse(50)],
            dir.path(),
        )
        .await?,
    );
    for i in 0..20 {
        let r = host.put(&format!("/kv/k{i}"), format!("v{i}")).await?;
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(
            host.get(&format!("/kv/k{i}")).await?.text(),
            format!("v{i}")
        );
    }
    let r = host.put("/kv/lost?then=500", "never").await?;
    assert_eq!(r.status, 500);
    assert_eq!(
        host.get("/kv/lost").await?.status,
        404,
        "a 500's write leaked"
    );
    let r = host.put("/kv/trapped?then=trap", "never").await?;
    assert_eq!(r.status, 502);
    for _ in 0..5 {
        assert_eq!(host.get("/kv/trapped").await?.status, 404);
        assert_eq!(host.get("/kv/k3").await?.text(), "v3");
    }
    increment_concurrently(&host).await?;
    assert_eq!(host.get("/kv/counter").await?.text(), "80");
    let host =
        std::sync::Arc::try_unwrap(host).map_err(|_| anyhow::anyhow!("host still shared"))?;
    host.shutdown().await;
    Ok(())
}

/// Two services deploying the same content with instance reuse each get their own warm
/// instances: a reused instance keeps its memory, which must never reach another service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_instances_are_never_shared_between_services() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("a", "/a", "test-echo").instance_reuse(10),
            Svc::new("b", "/b", "test-echo").instance_reuse(10),
        ],
        dir.path(),
    )
    .await?;
    let echo = std::fs::read(wasm("test-echo"))?;
    // The same content as v2 of both, then `a` back to v1: the registry finds v1's
    // compiled component among the loaded ones, the one `b`'s v2 runs on.
    for service in ["a", "b"] {
        let r = host
            .deploy_with(service, "version=v2", echo.clone())
            .await?;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = host
        .admin_post("/admin/services/a/activate?version=v1")
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let served = |r: &crate::support::Resp| r.json()["instance_requests"].as_u64();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(served(&host.get("/b/x").await?));
    }
    assert_eq!(seen, [Some(1), Some(2), Some(3)], "b's instance is reused");
    let r = host.get("/a/x").await?;
    assert_eq!(r.served_by(), Some("a@v1"));
    assert_eq!(served(&r), Some(1), "a got a fresh instance, not b's");
    host.shutdown().await;
    Ok(())
}

/// A guest that buffers write after write meets its service's write budget: the host
/// holds at most `limits.write_kib`, the guest gets the error, nothing commits, and
/// the other services answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_bomb_meets_the_write_budget() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("kv", "/", "test-kv").memory_mib(64),
            Svc::new("echo", "/echo", "test-echo"),
        ],
        dir.path(),
    )
    .await?;
    // 1,000 values of 4 MiB; the default budget (16 MiB) holds four.
    let r = host.post("/kv/bomb/fill?count=1000&kib=4096", "").await?;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("`limits.write_kib`"), "{}", r.text());
    assert_eq!(
        host.get("/kv/bomb-0").await?.status,
        404,
        "nothing committed"
    );
    assert_eq!(host.get("/echo/still-here").await?.status, 200);
    // Within the budget, the same request commits.
    let r = host.post("/kv/fine/fill?count=3&kib=1024", "").await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(host.get("/kv/fine-2").await?.text().len(), 1024 * 1024);
    host.shutdown().await;
    Ok(())
}
