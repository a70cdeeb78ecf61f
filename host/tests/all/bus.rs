//! The event bus: fan-out, order under retries, backoff, dead letters, redrive, replay,
//! undeclared topics, and an invocation's writes and events committing together.

use crate::assert_eventually;
use crate::support::{Host, Svc, data_dir};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn publisher() -> Svc {
    Svc::new("pub", "/pub", "test-publish").publishes("orders.created")
}

async fn count(host: &Host, prefix: &str, d: &str) -> anyhow::Result<u64> {
    Ok(host
        .get(&format!("/{prefix}/count/{d}"))
        .await?
        .text()
        .parse()?)
}

async fn order(host: &Host, prefix: &str, topic: &str) -> anyhow::Result<Vec<String>> {
    let r = host.get(&format!("/{prefix}/order/{topic}")).await?;
    if r.status == 404 {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_slice(&r.body)?)
}

async fn publish(host: &Host, data: &str) -> anyhow::Result<()> {
    let r = host
        .post("/pub/pub/orders.created", data.to_string())
        .await?;
    anyhow::ensure!(
        r.status == 201,
        "publishing {data}: {} {}",
        r.status,
        r.text()
    );
    Ok(())
}

async fn subscription(
    host: &Host,
    topic: &str,
    service: &str,
) -> anyhow::Result<serde_json::Value> {
    let topics = host.admin_get("/admin/topics").await?;
    let t = topics["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["topic"] == topic))
        .ok_or_else(|| anyhow::anyhow!("no topic {topic} in {topics}"))?;
    t["subscriptions"]
        .as_array()
        .and_then(|ss| ss.iter().find(|s| s["service"] == service))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no subscription of {service} in {t}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_event_in_order() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            publisher(),
            Svc::new("sub-a", "/a", "test-subscriber").subscribe("orders.created", 5, 50),
            Svc::new("sub-b", "/b", "test-subscriber").subscribe("orders.created", 5, 50),
        ],
        dir.path(),
    )
    .await?;
    let sent: Vec<String> = (1..=10).map(|i| format!("e{i}")).collect();
    for d in &sent {
        publish(&host, d).await?;
    }
    for prefix in ["a", "b"] {
        assert_eventually!(
            WAIT,
            order(&host, prefix, "orders.created").await?.len() == sent.len(),
            "sub-{prefix} did not receive every event"
        );
        assert_eq!(order(&host, prefix, "orders.created").await?, sent);
    }

    // The envelope: source, topic, offset, content type and key, trace context.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = http::Request::post(host.url("/pub/pub/orders.created?key=k-42"))
        .header("traceparent", traceparent)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"keyed",
        )))?;
    let response = crate::support::client().request(request).await?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    let r = crate::support::Resp {
        status,
        headers: http::HeaderMap::new(),
        body,
    };
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap_or_default().to_string();
    assert_eventually!(
        WAIT,
        count(&host, "a", "keyed").await? == 1,
        "keyed event not delivered"
    );
    let event = host.get("/a/event/keyed").await?.json();
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["source"], "pub@v1");
    assert_eq!(event["topic"], "orders.created");
    assert_eq!(event["offset"], 10);
    assert_eq!(event["key"], "k-42");
    assert_eq!(event["content_type"], "text/plain");
    // The gateway continues the trace with its own span as the parent.
    let delivered = event["traceparent"].as_str().unwrap_or_default();
    assert_eq!(
        delivered.split('-').nth(1),
        traceparent.split('-').nth(1),
        "the trace id reaches the subscriber: {delivered}"
    );
    assert_ne!(delivered, traceparent, "with the gateway's span as parent");
    assert_eq!(event["attempt"], 1);

    let sub = subscription(&host, "orders.created", "sub-b").await?;
    assert_eq!(sub["lag"], 0);
    assert_eq!(sub["cursor"], 11);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_with_backoff_and_applied_once_in_order() -> anyhow::Result<()>
{
    let dir = data_dir();
    let host = Host::start(
        &[
            publisher(),
            Svc::new("sub", "/s", "test-subscriber").subscribe("orders.created", 5, 100),
        ],
        dir.path(),
    )
    .await?;
    let started = Instant::now();
    for d in ["first", "fail2-x", "last"] {
        publish(&host, d).await?;
    }
    assert_eventually!(
        WAIT,
        order(&host, "s", "orders.created").await?.len() == 3,
        "not all delivered"
    );
    let elapsed = started.elapsed();
    // Order holds: "last" waited for "fail2-x" to succeed on its third attempt.
    assert_eq!(
        order(&host, "s", "orders.created").await?,
        ["first", "fail2-x", "last"]
    );
    // The failed attempts' writes were dropped: the effect is applied once.
    assert_eq!(count(&host, "s", "fail2-x").await?, 1);
    assert_eq!(host.get("/s/event/fail2-x").await?.json()["attempt"], 3);
    // Backoff: 100 ms before the second attempt, 200 ms before the third.
    assert!(
        elapsed >= Duration::from_millis(300),
        "retried too fast: {elapsed:?}"
    );
    let sub = subscription(&host, "orders.created", "sub").await?;
    assert_eq!(sub["retried"], 2);
    assert_eq!(sub["delivered"], 3);
    assert_eq!(sub["dead_letters"], 0);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_and_can_be_redriven() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            publisher(),
            Svc::new("sub", "/s", "test-subscriber").subscribe("orders.created", 3, 20),
        ],
        dir.path(),
    )
    .await?;
    publish(&host, "poison-1").await?;
    publish(&host, "trap-1").await?;
    publish(&host, "after").await?;
    // Later events keep flowing past the poison ones.
    assert_eventually!(
        WAIT,
        count(&host, "s", "after").await? == 1,
        "delivery stalled behind poison"
    );
    assert_eq!(count(&host, "s", "poison-1").await?, 0);
    assert_eq!(count(&host, "s", "trap-1").await?, 0);

    let dead = host
        .admin_get("/admin/subscriptions/sub/orders.created/dead-letters")
        .await?;
    assert_eq!(dead["topic"], "orders.created.dlq.sub");
    let letters = dead["dead_letters"].as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 2, "{dead}");
    assert_eq!(letters[0]["attempts"], 3);
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("poison"),
        "{}",
        letters[0]
    );
    assert!(
        letters[1]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("trapped"),
        "{}",
        letters[1]
    );
    // Each dead letter's event is a CloudEvent, as the SDK reads it.
    for (letter, payload) in letters.iter().zip(["poison-1", "trap-1"]) {
        use cloudevents::event::{AttributesReader as _, Data, SpecVersion};
        let event: cloudevents::Event = serde_json::from_value(letter["event"].clone())?;
        assert_eq!(event.specversion(), SpecVersion::V10);
        assert_eq!(event.ty(), "orders.created");
        assert_eq!(Some(event.id()), letter["event"]["id"].as_str());
        assert!(event.source().starts_with("pub@"), "{}", event.source());
        assert!(event.time().is_some());
        assert_eq!(
            event.data(),
            Some(&Data::Binary(payload.as_bytes().to_vec()))
        );
        assert!(event.extension("offset").is_some());
    }
    let sub = subscription(&host, "orders.created", "sub").await?;
    assert_eq!(
        (sub["dead_letters"].clone(), sub["lag"].clone()),
        (2.into(), 0.into())
    );
    let metrics = host.metrics().await?;
    let labels = [("topic", "orders.created"), ("service", "sub")];
    assert_eq!(
        crate::support::metric(&metrics, "microhost_bus_dead_letters", &labels),
        2.0
    );
    assert_eq!(
        crate::support::metric(&metrics, "microhost_bus_lag", &labels),
        0.0
    );

    // A fragile event fails while the service is broken, and is redriven once fixed.
    assert_eq!(host.post("/s/break", "").await?.status, 204);
    publish(&host, "fragile-1").await?;
    assert_eventually!(
        WAIT,
        subscription(&host, "orders.created", "sub").await?["dead_letters"] == 3,
        "fragile event not dead-lettered"
    );
    assert_eq!(
        crate::support::metric(
            &host.metrics().await?,
            "microhost_bus_dead_letters",
            &labels
        ),
        3.0
    );
    assert_eq!(host.post("/s/fix", "").await?.status, 204);
    let r = host
        .admin_post("/admin/subscriptions/sub/orders.created/redrive")
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["redriven"], 3);
    assert_eventually!(
        WAIT,
        count(&host, "s", "fragile-1").await? == 1,
        "redriven event not delivered"
    );
    // The poison ones fail again and return to the dead-letter topic.
    assert_eventually!(
        WAIT,
        subscription(&host, "orders.created", "sub").await?["dead_letters"] == 2,
        "poison events did not return to the dead-letter topic"
    );
    assert_eq!(
        count(&host, "s", "after").await?,
        1,
        "redrive touched other events"
    );

    let r = host
        .admin_post("/admin/subscriptions/nobody/orders.created/redrive")
        .await?;
    assert_eq!(r.status, 404);
    host.shutdown().await;
    Ok(())
}

/// A dead-letter topic is a topic: a service subscribed to `orders.created.dlq.sub`
/// receives what `sub` dead-lettered (the same event, under the dead-letter topic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_to_the_dead_letter_topic_receives_the_dead_letters() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            publisher(),
            Svc::new("sub", "/s", "test-subscriber").subscribe("orders.created", 2, 20),
            Svc::new("audit", "/audit", "test-subscriber").subscribe(
                "orders.created.dlq.sub",
                5,
                20,
            ),
        ],
        dir.path(),
    )
    .await?;
    // `sub` is broken: its fragile events fail and are dead-lettered; `audit` is not.
    assert_eq!(host.post("/s/break", "").await?.status, 204);
    publish(&host, "fragile-1").await?;
    publish(&host, "fragile-2").await?;
    assert_eventually!(
        WAIT,
        count(&host, "audit", "fragile-2").await? == 1,
        "the dead letter did not reach the dead-letter topic's subscriber"
    );
    assert_eq!(count(&host, "audit", "fragile-1").await?, 1);
    assert_eq!(
        order(&host, "audit", "orders.created.dlq.sub").await?,
        ["fragile-1", "fragile-2"]
    );
    let event = host.get("/audit/event/fragile-1").await?.json();
    assert_eq!(event["topic"], "orders.created.dlq.sub");
    assert_eq!(event["source"], "pub@v1");
    assert_eq!(event["offset"], 0);
    assert_eq!(
        count(&host, "s", "fragile-1").await?,
        0,
        "sub never acknowledged it"
    );
    // The dead letters are still listed (with why) for redrive.
    let dead = host
        .admin_get("/admin/subscriptions/sub/orders.created/dead-letters")
        .await?;
    assert_eq!(
        dead["dead_letters"].as_array().map(Vec::len),
        Some(2),
        "{dead}"
    );
    let sub = subscription(&host, "orders.created.dlq.sub", "audit").await?;
    assert_eq!(sub["lag"], 0, "{sub}");
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_again_from_an_offset() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            publisher(),
            Svc::new("sub-a", "/a", "test-subscriber").subscribe("orders.created", 5, 20),
            Svc::new("sub-b", "/b", "test-subscriber").subscribe("orders.created", 5, 20),
        ],
        dir.path(),
    )
    .await?;
    for d in ["r0", "r1", "r2"] {
        publish(&host, d).await?;
    }
    assert_eventually!(
        WAIT,
        order(&host, "a", "orders.created").await?.len() == 3,
        "not delivered"
    );
    let r = host
        .admin_post("/admin/subscriptions/sub-a/orders.created/replay?from=1")
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eventually!(
        WAIT,
        order(&host, "a", "orders.created").await?.len() == 5,
        "not replayed"
    );
    assert_eq!(
        order(&host, "a", "orders.created").await?,
        ["r0", "r1", "r2", "r1", "r2"]
    );
    assert_eq!(count(&host, "a", "r1").await?, 2);
    // Only the replayed subscription sees the events again.
    assert_eventually!(
        WAIT,
        order(&host, "b", "orders.created").await?.len() == 3,
        "sub-b lost events"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        order(&host, "b", "orders.created").await?,
        ["r0", "r1", "r2"]
    );

    for bad in ["?from=99", "?from=x", ""] {
        let r = host
            .admin_post(&format!(
                "/admin/subscriptions/sub-a/orders.created/replay{bad}"
            ))
            .await?;
        assert_eq!(r.status, 400, "replay{bad}: {}", r.text());
    }
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_events_commit_together_or_not_at_all() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            publisher(),
            Svc::new("sub", "/s", "test-subscriber").subscribe("orders.created", 5, 20),
        ],
        dir.path(),
    )
    .await?;

    // Undeclared topic: an error the guest sees (and answers 422 with), not a trap.
    let r = host.post("/pub/pub/billing.paid", "x").await?;
    assert_eq!(r.status, 422, "{}", r.text());
    let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.contains("may not publish to topic \"billing.paid\""),
        "{detail}"
    );

    let r = host
        .post("/pub/pub/orders.created?then=500", "lost-500")
        .await?;
    assert_eq!(r.status, 500);
    let r = host
        .post("/pub/pub/orders.created?then=trap", "lost-trap")
        .await?;
    assert_eq!(r.status, 502);
    publish(&host, "kept").await?;

    assert_eventually!(
        WAIT,
        count(&host, "s", "kept").await? == 1,
        "committed event not delivered"
    );
    assert_eq!(host.get("/pub/kv/published-kept").await?.status, 200);
    for lost in ["lost-500", "lost-trap"] {
        assert_eq!(count(&host, "s", lost).await?, 0, "{lost} was delivered");
        let r = host.get(&format!("/pub/kv/published-{lost}")).await?;
        assert_eq!(r.status, 404, "{lost}'s write was committed");
    }
    let topics = host.admin_get("/admin/topics").await?;
    assert_eq!(topics["topics"][0]["length"], 1, "{topics}");
    host.shutdown().await;
    Ok(())
}

async fn cli(host: &Host, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let output = host.cli(args).await?;
    anyhow::ensure!(
        output.status.success(),
        "microhost {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_topics_and_drives_dead_letters_and_replay() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            publisher(),
            Svc::new("sub", "/s", "test-subscriber").subscribe("orders.created", 1, 10),
        ],
        dir.path(),
    )
    .await?;
    publish(&host, "poison-cli").await?;
    publish(&host, "ok-cli").await?;
    assert_eventually!(
        WAIT,
        count(&host, "s", "ok-cli").await? == 1,
        "not delivered"
    );

    let topics = cli(&host, &["topics"]).await?;
    assert_eq!(topics["topics"][0]["topic"], "orders.created");
    assert_eq!(topics["topics"][0]["length"], 2);
    assert_eq!(topics["topics"][0]["subscriptions"][0]["dead_letters"], 1);

    let dead = cli(&host, &["dead-letters", "sub", "orders.created"]).await?;
    assert_eq!(dead["dead_letters"][0]["attempts"], 1);
    let redriven = cli(&host, &["redrive", "sub", "orders.created"]).await?;
    assert_eq!(redriven["redriven"], 1);
    let replayed = cli(&host, &["replay", "sub", "orders.created", "--from", "1"]).await?;
    assert_eq!(replayed["cursor"], 1);
    assert_eventually!(
        WAIT,
        count(&host, "s", "ok-cli").await? == 2,
        "replay did not redeliver"
    );

    // Errors name what is wrong and exit non-zero.
    let output = host
        .cli(&["replay", "sub", "nope.topic", "--from", "0"])
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("nope.topic"),
        "{stderr}"
    );
    host.shutdown().await;
    Ok(())
}
