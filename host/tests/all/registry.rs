//! The registry: swaps under load, canaries, automatic rollback, health gates and
//! probes, and state that survives a restart.

use crate::support::{Host, Resp, Svc, data_dir, wasm};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn echo() -> anyhow::Result<Vec<u8>> {
    Ok(std::fs::read(wasm("test-echo"))?)
}

/// Status of `service` from the admin API.
async fn status(host: &Host, service: &str) -> anyhow::Result<serde_json::Value> {
    host.admin_get(&format!("/admin/services/{service}")).await
}

async fn history(host: &Host, service: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let answer = host
        .admin_get(&format!("/admin/services/{service}/history?limit=1000"))
        .await?;
    Ok(answer["history"].as_array().cloned().unwrap_or_default())
}

fn actions(history: &[serde_json::Value]) -> Vec<String> {
    history
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap_or("?"),
                e["version"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn expect(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
}

/// One request of the load: when it started and ended, who answered, the status.
struct Seen {
    started: Instant,
    ended: Instant,
    version: String,
    status: u16,
}

/// `workers` clients sending requests until `stop`; `done` counts answers.
fn load(
    host: &Arc<Host>,
    workers: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    (0..workers)
        .map(|worker| {
            let (host, stop, done) = (host.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, version) = match host.get(&format!("/w{worker}")).await {
                        Ok(r) => (r.status, r.served_by().unwrap_or("none").to_string()),
                        Err(e) => (0, format!("transport error: {e}")),
                    };
                    seen.push(Seen {
                        started,
                        ended: Instant::now(),
                        version,
                        status,
                    });
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_under_load_drop_nothing() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Arc::new(Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers = load(&host, 6, &stop, &done);

    // (sent, answered, version active after the swap)
    let mut swaps: Vec<(Instant, Instant, String)> = Vec::new();
    for i in 0..100 {
        let before = done.load(Ordering::Relaxed);
        crate::assert_eventually!(
            Duration::from_secs(30),
            done.load(Ordering::Relaxed) >= before + 5,
            "no traffic before swap {i}"
        );
        let sent = Instant::now();
        let (r, version) = if i % 2 == 0 {
            (host.deploy("echo", "v2", echo()?).await?, "v2")
        } else {
            (
                host.admin_post("/admin/services/echo/rollback").await?,
                "v1",
            )
        };
        let answered = Instant::now();
        assert!(
            r.status == 201 || r.status == 200,
            "swap {i}: {} {}",
            r.status,
            r.text()
        );
        swaps.push((sent, answered, format!("echo@{version}")));
    }
    let before = done.load(Ordering::Relaxed);
    crate::assert_eventually!(
        Duration::from_secs(30),
        done.load(Ordering::Relaxed) >= before + 5,
        "no traffic after the swaps"
    );
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await?);
    }

    let failed: Vec<_> = all
        .iter()
        .filter(|s| s.status != 200)
        .map(|s| (s.status, &s.version))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(5)]
    );
    // Active when a request started: the last swap answered before; the one after it
    // is the next swap sent (it may switch while the request is on its way).
    let mut exact = 0;
    for seen in &all {
        let done_before = swaps
            .iter()
            .rposition(|(_, answered, _)| *answered < seen.started);
        let active = done_before.map_or("echo@v1", |i| swaps[i].2.as_str());
        let next = swaps.get(done_before.map_or(0, |i| i + 1));
        let allowed_next = next.map(|(_, _, v)| v.as_str());
        assert!(
            seen.version == active || Some(seen.version.as_str()) == allowed_next,
            "a request answered by {} while {active} was active (next {allowed_next:?})",
            seen.version
        );
        // Between two swaps, only the active version answers.
        if next.is_none_or(|(sent, _, _)| seen.ended < *sent) {
            assert_eq!(seen.version, active, "a retired version answered");
            exact += 1;
        }
    }
    let v1 = all.iter().filter(|s| s.version == "echo@v1").count();
    let v2 = all.iter().filter(|s| s.version == "echo@v2").count();
    println!(
        "100 swaps: {} requests, 0 failed, v1 {v1}, v2 {v2}, {exact} between swaps",
        all.len()
    );
    assert!(
        v1 >= 100 && v2 >= 100 && exact >= 300,
        "v1 {v1}, v2 {v2}, exact {exact}"
    );
    let history = history(&host, "echo").await?;
    assert_eq!(
        history.iter().filter(|e| e["action"] == "rollback").count(),
        50
    );
    let host = Arc::try_unwrap(host).map_err(|_| anyhow::anyhow!("host still shared"))?;
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_gets_its_share_then_promote_and_rollback_switch_at_once() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?;
    let r = host
        .deploy_with("echo", "version=v2&canary=20", echo()?)
        .await?;
    expect(&r, 201, "canary deploy");
    assert_eq!(r.json()["active"], "v1");
    assert_eq!(r.json()["canary"]["weight"], 20);
    let s = status(&host, "echo").await?;
    assert_eq!(s["canary"]["version"], "v2");
    assert_eq!(s["canary"]["weight"], 20);

    // 1,000 requests: the canary's share is binomial (n = 1000, p = 0.2, sd ≈ 12.6);
    // the test accepts 14 % to 26 %, more than 4.5 standard deviations either side.
    let mut canary = 0;
    for _ in 0..1000 {
        let r = host.get("/share").await?;
        expect(&r, 200, "request during the canary");
        if r.served_by() == Some("echo@v2") {
            canary += 1;
        }
    }
    println!("canary at 20 %: {canary} of 1000 requests");
    assert!((140..=260).contains(&canary), "canary got {canary} of 1000");

    let versions = host.admin_get("/admin/services/echo/versions").await?;
    let roles: Vec<String> = versions["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            format!(
                "{}={}",
                v["version"].as_str().unwrap_or("?"),
                v["role"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(roles, ["v1=active", "v2=canary"]);

    let r = host.admin_post("/admin/services/echo/promote").await?;
    expect(&r, 200, "promote");
    for _ in 0..20 {
        assert_eq!(
            host.get("/after-promote").await?.served_by(),
            Some("echo@v2")
        );
    }
    // Rollback answers once the switch is durable; the next request is served by v1.
    let started = Instant::now();
    let r = host.admin_post("/admin/services/echo/rollback").await?;
    expect(&r, 200, "rollback");
    let first = host.get("/after-rollback").await?;
    let took = started.elapsed();
    assert_eq!(first.served_by(), Some("echo@v1"));
    println!("rollback to first request on v1: {took:?}");
    assert!(took < Duration::from_secs(1), "rollback took {took:?}");

    // Changes that do not apply are refused with the reason.
    let r = host.admin_post("/admin/services/echo/promote").await?;
    expect(&r, 409, "promote without a canary");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("no canary")
    );
    let r = host
        .admin_post("/admin/services/echo/canary?version=v9&weight=10")
        .await?;
    expect(&r, 404, "canary of an unknown version");
    let r = host
        .admin_post("/admin/services/echo/canary?version=v1&weight=10")
        .await?;
    expect(&r, 409, "the active version as canary");
    let r = host
        .admin_post("/admin/services/echo/canary?version=v2&weight=0")
        .await?;
    expect(&r, 409, "ending a canary that is not there");

    assert_eq!(
        actions(&history(&host, "echo").await?),
        ["manifest v1", "deploy v2", "promote v2", "rollback v1"]
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_automatically() -> anyhow::Result<()> {
    let dir = data_dir();
    let svc = Svc::new("echo", "/", "test-echo")
        .set("canary = { min_requests = 10, error_margin_pct = 20, window_ms = 60000 }");
    let host = Host::start(&[svc], dir.path()).await?;
    let trap = std::fs::read(wasm("test-trap"))?;
    let r = host
        .deploy_with("echo", "version=bad&canary=50", trap)
        .await?;
    expect(
        &r,
        201,
        "trapping canary deploy (it passes health: only requests trap)",
    );

    let mut failed = 0;
    let mut sent = 0;
    while status(&host, "echo").await?["canary"].is_object() {
        let r = host.get("/x").await?;
        sent += 1;
        if r.status != 200 {
            failed += 1;
            assert_eq!(r.served_by(), Some("echo@bad"));
        }
        assert!(
            sent < 500,
            "the canary was not rolled back after {sent} requests"
        );
    }
    println!("auto-rollback after {sent} requests, {failed} failed");
    assert!(failed >= 10, "rolled back before min_requests: {failed}");
    for _ in 0..20 {
        let r = host.get("/after").await?;
        expect(&r, 200, "after the rollback");
        assert_eq!(r.served_by(), Some("echo@v1"));
    }
    let history = history(&host, "echo").await?;
    let last = history.last().cloned().unwrap_or_default();
    assert_eq!(last["action"], "auto-rollback", "{history:?}");
    let detail = last["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("\"bad\" removed") && detail.contains("failed"),
        "{detail}"
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_that_fail_health_or_smoke_are_refused() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("h", "/h", "test-health").set("health = { interval_ms = 0 }"),
            Svc::new("s", "/s", "test-echo")
                .set("health = { interval_ms = 0, smoke = \"/ready\" }"),
        ],
        dir.path(),
    )
    .await?;
    // v1 of `h` records in its state that it is sick: a new version that checks that
    // state is refused by its health export.
    let r = host.put("/h/sick?ms=600000", "").await?;
    expect(&r, 204, "make h sick");
    let r = host
        .deploy("h", "v2", std::fs::read(wasm("test-health"))?)
        .await?;
    expect(&r, 422, "deploy failing health");
    let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.contains("health check answered: sick for another"),
        "{detail}"
    );
    let still = host.get("/h/x").await?;
    expect(&still, 200, "h after the refused deploy");
    assert_eq!(still.served_by(), Some("h@v1"));

    // A version whose smoke request traps.
    let r = host
        .deploy("s", "v2", std::fs::read(wasm("test-trap"))?)
        .await?;
    expect(&r, 422, "deploy failing the smoke request");
    let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.contains("smoke request GET /ready failed") && detail.contains("trapped"),
        "{detail}"
    );
    assert_eq!(host.get("/s/x").await?.served_by(), Some("s@v1"));
    // A version with a 404 on the smoke path.
    let r = host
        .deploy("s", "v3", std::fs::read(wasm("test-kv"))?)
        .await?;
    expect(&r, 422, "deploy answering 404 to the smoke request");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("answered 404")
    );
    assert_eq!(host.get("/s/x").await?.served_by(), Some("s@v1"));

    // Refusals are in the history, and no refused version was stored.
    let history = history(&host, "s").await?;
    assert_eq!(
        actions(&history),
        ["manifest v1", "refused v2", "refused v3"]
    );
    let versions = host.admin_get("/admin/services/s/versions").await?;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(1));
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_service_leaves_routing_and_comes_back() -> anyhow::Result<()> {
    let dir = data_dir();
    let svc =
        Svc::new("h", "/", "test-health").set("health = { interval_ms = 50, unhealthy_after = 2 }");
    let host = Host::start(&[svc], dir.path()).await?;
    expect(&host.get("/x").await?, 200, "healthy at first");
    expect(&host.put("/sick?ms=1500", "").await?, 204, "make it sick");
    let mut unhealthy = None;
    crate::assert_eventually!(
        Duration::from_secs(10),
        {
            let r = host.get("/x").await?;
            let out = r.status == 503;
            if out {
                unhealthy = Some(r);
            }
            out
        },
        "the sick service stayed in routing"
    );
    let r = unhealthy.ok_or_else(|| anyhow::anyhow!("no 503"))?;
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.contains("out of routing") && detail.contains("sick"),
        "{detail}"
    );
    assert_eq!(status(&host, "h").await?["health"]["healthy"], false);
    crate::assert_eventually!(
        Duration::from_secs(10),
        host.get("/x").await?.status == 200,
        "the service did not come back when healthy"
    );
    let actions = actions(&history(&host, "h").await?);
    assert_eq!(actions, ["manifest v1", "unhealthy v1", "healthy v1"]);
    host.shutdown().await;
    Ok(())
}

/// `/readyz` (readiness) turns 503 naming the service while its active version fails
/// its health checks, and 200 again once it passes; `/healthz` (liveness) stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_a_service_fails_its_health_checks() -> anyhow::Result<()> {
    let dir = data_dir();
    let services = [
        Svc::new("echo", "/echo", "test-echo"),
        Svc::new("h", "/h", "test-health")
            .set("health = { interval_ms = 50, unhealthy_after = 2 }"),
    ];
    let host = Host::start(&services, dir.path()).await?;
    let admin_ready = || async {
        let token = host.running.admin_token.clone();
        host.send(
            http::Method::GET,
            &host.admin_url("/readyz"),
            bytes::Bytes::new(),
            Some(&token),
        )
        .await
    };
    let ready = host.get("/readyz").await?;
    expect(&ready, 200, "ready at first");
    assert_eq!(
        ready.json(),
        serde_json::json!({"status": "ready", "services": 2})
    );
    expect(&admin_ready().await?, 200, "the admin listener's readyz");
    expect(&host.put("/h/sick?ms=1500", "").await?, 204, "make it sick");
    let mut unready = None;
    crate::assert_eventually!(
        Duration::from_secs(10),
        {
            let r = host.get("/readyz").await?;
            let out = r.status == 503;
            if out {
                unready = Some(r);
            }
            out
        },
        "readyz stayed 200 while h failed its health checks"
    );
    let r = unready.ok_or_else(|| anyhow::anyhow!("no 503"))?;
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        r.json()["unready"],
        serde_json::json!(["h@v1"]),
        "{}",
        r.text()
    );
    expect(
        &host.get("/healthz").await?,
        200,
        "liveness is not readiness",
    );
    expect(
        &host.get("/echo/x").await?,
        200,
        "the other service serves on",
    );
    crate::assert_eventually!(
        Duration::from_secs(10),
        host.get("/readyz").await?.status == 200,
        "readyz did not turn 200 once h passed its checks"
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_weights_and_history_survive_a_restart() -> anyhow::Result<()> {
    let dir = data_dir();
    let services = [Svc::new("echo", "/", "test-echo")];
    let host = Host::start(&services, dir.path()).await?;
    expect(&host.deploy("echo", "v2", echo()?).await?, 201, "deploy v2");
    let r = host
        .deploy_with(
            "echo",
            "version=v3&canary=30",
            std::fs::read(wasm("test-kv"))?,
        )
        .await?;
    expect(&r, 201, "canary v3");
    let before = history(&host, "echo").await?;
    host.shutdown().await;

    let host = Host::start(&services, dir.path()).await?;
    let s = status(&host, "echo").await?;
    assert_eq!(s["active"]["version"], "v2");
    assert_eq!(s["canary"]["version"], "v3");
    assert_eq!(s["canary"]["weight"], 30);
    assert_eq!(s["previous"], serde_json::json!(["v1"]));
    // Both came from the precompiled cache: the first request compiles nothing.
    assert_eq!(s["active"]["loaded_from_cache"], true);
    assert_eq!(s["canary"]["loaded_from_cache"], true);
    assert_eq!(history(&host, "echo").await?, before);
    // (`/kv` is answered 200 by both v2, an echo, and v3, a key-value service.)
    let r = host.get("/kv").await?;
    expect(&r, 200, "first request after restart");
    // Rollback still knows where to go.
    expect(
        &host.admin_post("/admin/services/echo/rollback").await?,
        200,
        "end canary",
    );
    expect(
        &host.admin_post("/admin/services/echo/rollback").await?,
        200,
        "back to v1",
    );
    assert_eq!(host.get("/x").await?.served_by(), Some("echo@v1"));
    host.shutdown().await;

    // A manifest naming new content under the same label wins, under a label that
    // says which content it is.
    let changed = [Svc::new("echo", "/", "test-kv")];
    let host = Host::start(&changed, dir.path()).await?;
    let active = status(&host, "echo").await?["active"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(active.starts_with("v1+"), "{active}");
    assert_eq!(
        host.get("/kv").await?.served_by(),
        Some(format!("echo@{active}").as_str())
    );
    let last = history(&host, "echo")
        .await?
        .last()
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["action"], "manifest");
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_the_manifest_changes_services_live() -> anyhow::Result<()> {
    let dir = data_dir();
    let path = dir.path().join("microhost.toml");
    let first = [
        Svc::new("echo", "/echo", "test-echo"),
        Svc::new("kv", "/kv", "test-kv"),
        Svc::new("pub", "/pub", "test-publish").publishes("apply.events"),
    ];
    std::fs::write(&path, crate::support::manifest_toml(&first))?;
    let mut config = crate::support::config(&first, dir.path())?;
    config.manifest = microhost::config::Manifest::load(&path)?;
    let host = Arc::new(Host::start_with(config).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    // Load on /echo the whole time (the workers' paths are /w{n}: use a client of our own).
    let echo_load = {
        let (host, stop, done) = (host.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match host.get("/echo/load").await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e.to_string()),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failed
        })
    };

    // Add a subscriber and a health service, drop kv, reconfigure echo.
    let second = [
        Svc::new("echo", "/echo", "test-echo").config("greeting", "applied"),
        Svc::new("pub", "/pub", "test-publish").publishes("apply.events"),
        Svc::new("sub", "/sub", "test-subscriber")
            .subscribe("apply.events", 5, 10)
            .config("record_order", "false"),
        Svc::new("h", "/h", "test-health"),
    ];
    std::fs::write(&path, crate::support::manifest_toml(&second))?;
    let output = host.cli(&["apply"]).await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["added"], serde_json::json!(["sub", "h"]), "{report}");
    assert_eq!(report["removed"], serde_json::json!(["kv"]), "{report}");
    assert_eq!(
        report["reconfigured"],
        serde_json::json!(["echo"]),
        "{report}"
    );
    assert_eq!(report["unchanged"], serde_json::json!(["pub"]), "{report}");

    expect(&host.get("/kv/x").await?, 404, "a removed service");
    assert_eq!(host.get("/echo/x").await?.json()["greeting"], "applied");
    expect(&host.get("/h/x").await?, 200, "an added service");
    expect(
        &host.post("/pub/pub/apply.events", "after-apply").await?,
        201,
        "publish",
    );
    crate::assert_eventually!(
        Duration::from_secs(20),
        host.get("/sub/counts").await?.json()["after-apply"] == 1,
        "the added subscriber got nothing"
    );

    // New content for echo under the same label: deployed as v1+<hash>.
    let third = [
        Svc::new("echo", "/echo", "test-health").config("greeting", "applied"),
        second[1].clone(),
        second[2].clone(),
        second[3].clone(),
    ];
    std::fs::write(&path, crate::support::manifest_toml(&third))?;
    let r = host.admin_post("/admin/apply").await?;
    expect(&r, 200, "apply new echo content");
    let deployed = r.json()["deployed"][0].as_str().unwrap_or("").to_string();
    assert!(deployed.starts_with("echo@v1+"), "{}", r.text());
    assert_eq!(
        host.get("/echo/x").await?.served_by(),
        Some(deployed.as_str())
    );

    // A change that fails the gate leaves that service as it was; an invalid manifest
    // changes nothing.
    let fourth = [
        Svc::new("echo", "/echo", "test-wrong-world"),
        second[1].clone(),
        second[2].clone(),
        second[3].clone(),
    ];
    std::fs::write(&path, crate::support::manifest_toml(&fourth))?;
    let r = host.admin_post("/admin/apply").await?;
    expect(&r, 422, "apply a component of the wrong world");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("incoming-handler"),
        "{}",
        r.text()
    );
    assert_eq!(
        host.get("/echo/x").await?.served_by(),
        Some(deployed.as_str())
    );
    std::fs::write(&path, "[[service]]\nname = \"Bad Name\"\n")?;
    let r = host.admin_post("/admin/apply").await?;
    expect(&r, 400, "apply an invalid manifest");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("microhost.toml"),
        "{}",
        r.text()
    );
    expect(&host.get("/h/x").await?, 200, "after the invalid manifest");

    stop.store(true, Ordering::Relaxed);
    let failed = echo_load.await?;
    assert!(
        failed.is_empty(),
        "requests to echo failed during applies: {failed:?}"
    );
    assert!(done.load(Ordering::Relaxed) > 0);
    let host = Arc::try_unwrap(host).map_err(|_| anyhow::anyhow!("host still shared"))?;
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_host_applies_manifest_and_component_changes() -> anyhow::Result<()> {
    let dir = data_dir();
    let path = dir.path().join("microhost.toml");
    // The component is a copy the test rewrites, as `just build-components` would.
    let component = dir.path().join("echo.wasm");
    std::fs::copy(wasm("test-echo"), &component)?;
    let mut svc = Svc::new("echo", "/", "test-echo");
    svc.wasm = component.clone();
    std::fs::write(&path, crate::support::manifest_toml(&[svc.clone()]))?;
    let mut config = crate::support::config(&[svc.clone()], dir.path())?;
    config.manifest = microhost::config::Manifest::load(&path)?;
    config.watch = true;
    let host = Host::start_with(config).await?;
    assert_eq!(host.get("/x").await?.served_by(), Some("echo@v1"));

    std::fs::write(
        &path,
        crate::support::manifest_toml(&[svc.clone().config("greeting", "watched")]),
    )?;
    crate::assert_eventually!(
        Duration::from_secs(10),
        host.get("/x").await?.json()["greeting"] == "watched",
        "the manifest change was not applied"
    );
    std::fs::copy(wasm("test-health"), &component)?;
    crate::assert_eventually!(
        Duration::from_secs(10),
        host.get("/x")
            .await?
            .served_by()
            .is_some_and(|s| s.starts_with("echo@v1+")),
        "the rebuilt component was not deployed"
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_gate_refuses_a_version_that_cannot_serve_the_subscriptions()
-> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("sub", "/sub", "test-subscriber").subscribe("gate.events", 3, 10),
            Svc::new("plain", "/plain", "test-echo"),
        ],
        dir.path(),
    )
    .await?;
    // `hello` is a plain wasi:http/proxy component: fine for a service without
    // subscriptions, refused for one with.
    let hello = std::fs::read(wasm("hello"))?;
    let r = host.deploy("sub", "v2", hello.clone()).await?;
    expect(&r, 400, "a non-subscriber for a subscribing service");
    let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.contains("subscribes to topic \"gate.events\"")
            && detail.contains("microhost:platform/subscriber"),
        "{detail}"
    );
    assert_eq!(host.get("/sub/counts").await?.served_by(), Some("sub@v1"));
    let r = host.deploy("plain", "v2", hello).await?;
    expect(&r, 201, "the same component where no subscription needs it");
    let r = host.get("/plain").await?;
    assert_eq!(r.text(), "Hello, world!\n");
    assert_eq!(r.served_by(), Some("plain@v2"));
    host.shutdown().await;
    Ok(())
}

/// The `window` counters of the active version and the canary.
async fn windows(host: &Host) -> anyhow::Result<[(u64, u64); 2]> {
    let s = status(host, "echo").await?;
    let counts = |v: &serde_json::Value| {
        (
            v["window"]["ok"].as_u64().unwrap_or(u64::MAX),
            v["window"]["failed"].as_u64().unwrap_or(u64::MAX),
        )
    };
    Ok([counts(&s["active"]), counts(&s["canary"])])
}

/// The outcome table's rows as the breaker and the canary analysis see them: a 503 the
/// service answers is no verdict for either, a 4xx is a success for both, a 500 a
/// failure for both (the active version's against the breaker, the canary's against
/// its analysis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_and_canary_count_a_guest_503_alike() -> anyhow::Result<()> {
    let dir = data_dir();
    let svc = Svc::new("echo", "/", "test-echo")
        .set("breaker = { failures = 3, open_ms = 60000 }")
        .set("canary = { min_requests = 10, error_margin_pct = 20, window_ms = 600000 }");
    let host = Host::start(&[svc], dir.path()).await?;
    let r = host
        .deploy_with("echo", "version=v2&canary=50", echo()?)
        .await?;
    expect(&r, 201, "canary deploy");

    // A guest's own 503 (a dependency of its is down): no verdict either way.
    for _ in 0..40 {
        let r = host.post("/x?status=503", "").await?;
        expect(&r, 503, "the service's own 503");
        assert!(r.served_by().is_some(), "answered by a version");
    }
    assert_eq!(windows(&host).await?, [(0, 0), (0, 0)], "503s counted");
    assert_eq!(crate::policies::breaker(&host, "echo").await?, "closed");
    assert!(status(&host, "echo").await?["canary"].is_object());

    // A 4xx is the caller's fault: a success for both.
    for _ in 0..10 {
        expect(
            &host.post("/x?status=404", "").await?,
            404,
            "the service's 404",
        );
    }
    let [(active_ok, active_failed), (canary_ok, canary_failed)] = windows(&host).await?;
    assert_eq!((active_failed, canary_failed), (0, 0));
    assert_eq!(active_ok + canary_ok, 10, "every 404 counted as a success");

    // A 500 is the service's failure: the active version's open the breaker after 3,
    // the canary's go to its window; once open, nothing reaches either.
    let mut answered = 0;
    for _ in 0..40 {
        let r = host.post("/x?status=500", "").await?;
        match r.status {
            500 => answered += 1,
            503 => {}
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(crate::policies::breaker(&host, "echo").await?, "open");
    let [(_, active_failed), (_, canary_failed)] = windows(&host).await?;
    assert_eq!(
        active_failed, 3,
        "the breaker opened on the third active failure"
    );
    assert_eq!(
        active_failed + canary_failed,
        answered,
        "every 500 the service answered counted once"
    );
    host.shutdown().await;
    Ok(())
}
