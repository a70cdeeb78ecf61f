//! Services in Python (componentize-py) and JavaScript (componentize-js), built from
//! components/test-py and components/test-js with their guest helpers: served, failing,
//! calling, subscribing and hot-swapped like the Rust ones.

use crate::assert_eventually;
use crate::support::{Host, Svc, data_dir, wasm};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn guests() -> [Svc; 3] {
    [
        Svc::new("py", "/py", "test-py")
            .memory_mib(128)
            .config("greeting", "hello from the manifest")
            .set("calls = [\"js\"]")
            .subscribe("poly.events", 3, 10),
        Svc::new("js", "/js", "test-js")
            .memory_mib(128)
            .timeout_ms(2_000)
            .config("greeting", "hello from the manifest")
            .subscribe("poly.events", 3, 10),
        Svc::new("pub", "/pub", "test-publish").publishes("poly.events"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_services_answer_fail_call_and_subscribe() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&guests(), dir.path()).await?;
    for (service, lang) in [("py", "python"), ("js", "javascript")] {
        let r = host.get(&format!("/{service}/hello")).await?;
        assert_eq!(r.status, 200, "{service}: {}", r.text());
        assert_eq!(r.json()["lang"], lang);
        assert_eq!(r.json()["greeting"], "hello from the manifest");
        assert_eq!(r.json()["path"], format!("/{service}/hello"));
        for n in 1..=2 {
            let r = host.get(&format!("/{service}/count")).await?;
            assert_eq!(r.json()["count"], n, "{service}: {}", r.text());
        }
        // An exception is the helper's 500 problem; each failure costs that request only.
        let r = host.get(&format!("/{service}/raise")).await?;
        assert_eq!(r.status, 500, "{service}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(r.text().contains("on purpose"), "{service}: {}", r.text());
        // A trap (Python) is the host's 502; a JavaScript handler that never answers is
        // stopped at its deadline (504).
        let (path, status) = if service == "py" {
            ("trap", 502)
        } else {
            ("hang", 504)
        };
        let r = host.get(&format!("/{service}/{path}")).await?;
        assert_eq!(r.status, status, "{service}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.json()["service"], service, "{}", r.text());
        let r = host.get(&format!("/{service}/count")).await?;
        assert_eq!(
            r.json()["count"],
            3,
            "{service} after the failures: {}",
            r.text()
        );
        let r = host.get(&format!("/{service}/nothing-here")).await?;
        assert_eq!(r.status, 404, "{service}: {}", r.text());
    }

    // Python calls JavaScript through the host, as the manifest allows.
    let r = host.get("/py/call/js/hello").await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["lang"], "javascript", "{}", r.text());
    // JavaScript may not call Python (no `calls`): the host refuses the connection, and
    // the refused fetch is an exception, the helper's 500.
    let r = host.get("/js/call/py/hello").await?;
    assert_eq!(r.status, 500, "js may not call py: {}", r.text());
    assert!(r.text().contains("fetch"), "{}", r.text());

    // Events: counted; an exception and a trap are retried, then dead-lettered.
    for data in ["one", "fail", "trap", "two"] {
        let r = host
            .post("/pub/pub/poly.events", data.as_bytes().to_vec())
            .await?;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    for service in ["py", "js"] {
        assert_eventually!(
            WAIT,
            host.get(&format!("/{service}/events")).await?.json()["poly.events"] == 2,
            "{service} did not count both good events"
        );
        let dead = host
            .admin_get(&format!(
                "/admin/subscriptions/{service}/poly.events/dead-letters"
            ))
            .await?;
        let letters = dead["dead_letters"].as_array().cloned().unwrap_or_default();
        assert_eq!(letters.len(), 2, "{service}: {dead}");
        for letter in &letters {
            assert_eq!(letter["attempts"], 3, "{service}: {letter}");
        }
        assert!(
            letters[0]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("on purpose"),
            "{service}: the exception's message is the reason: {}",
            letters[0]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_service_swaps_under_load_and_an_unhealthy_version_is_refused()
-> anyhow::Result<()> {
    let dir = data_dir();
    let host = Arc::new(
        Host::start(
            &[Svc::new("py", "/", "test-py").memory_mib(128)],
            dir.path(),
        )
        .await?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (host, stop, done) = (host.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut failed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match host.get("/hello").await {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.push(e.to_string()),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failed
            })
        })
        .collect();
    let component = std::fs::read(wasm("test-py"))?;
    let unhealthy = std::fs::read(wasm("test-py-unhealthy"))?;
    for (i, version) in ["v2", "v3"].iter().enumerate() {
        let before = done.load(Ordering::Relaxed);
        assert_eventually!(
            WAIT,
            done.load(Ordering::Relaxed) >= before + 5,
            "no traffic before swap {i}"
        );
        let r = host.deploy("py", version, component.clone()).await?;
        assert_eq!(r.status, 201, "swap to {version}: {}", r.text());
        let r = host.admin_post("/admin/services/py/rollback").await?;
        assert_eq!(r.status, 200, "rollback from {version}: {}", r.text());
    }
    let r = host.deploy("py", "sick", unhealthy).await?;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("unhealthy, on purpose"), "{}", r.text());
    let before = done.load(Ordering::Relaxed);
    assert_eventually!(
        WAIT,
        done.load(Ordering::Relaxed) >= before + 5,
        "no traffic after the refusal"
    );
    let status = host.admin_get("/admin/services/py").await?;
    assert_eq!(status["active"]["version"], "v1", "{status}");
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for worker in workers {
        failed.extend(worker.await?);
    }
    let served = done.load(Ordering::Relaxed);
    println!(
        "python swap test: {served} requests, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {served} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    Ok(())
}
