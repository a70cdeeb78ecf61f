//! Event-bus benchmark: durable publish → deliver throughput and latency.
//!
//! Starts the host library in-process (release build) with a publisher and a subscriber
//! (the `test-publish` and `test-subscriber` components), publishes N events through
//! HTTP from C concurrent clients (each publish is acknowledged only once flushed to
//! disk), waits until the subscriber has handled all of them (each delivery commits its
//! effects and the cursor durably), and reports:
//! - publish throughput (acknowledged publishes per second),
//! - end-to-end throughput (events handled per second, first publish to last delivery),
//! - publish → handle latency p50/p99 of events published one at a time (each after the
//!   previous one was handled), from the envelope's publish time to the moment the
//!   subscriber's handler runs, measured in the guest; and the same under the saturating
//!   load above, where it is mostly time spent queued behind earlier events.
//!
//! Usage: `just bench` or
//! `cargo bench -p microhost --bench bus -- [EVENTS] [CLIENTS] [LATENCY_SAMPLES]`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use microhost::HostConfig;
use microhost::config::Manifest;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn send(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The publish → handle latencies (µs) the subscriber recorded for `{prefix}0..n`, sorted.
async fn latencies(
    client: &HttpClient,
    base: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let url = format!("{base}/sub/latency/{prefix}{i}");
        let (status, body) = send(client, http::Method::GET, &url, Bytes::new()).await?;
        anyhow::ensure!(status == 200, "latency of {prefix}{i}: {status}");
        out.push(String::from_utf8_lossy(&body).trim().parse::<u64>()?);
    }
    out.sort_unstable();
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; take the numbers that follow, if any.
    let numbers: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    let events = numbers.first().copied().unwrap_or(2000);
    let clients = numbers.get(1).copied().unwrap_or(32);
    let samples = numbers.get(2).copied().unwrap_or(300);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = |name: &str| {
        root.join(format!(
            "components/target/wasm32-wasip2/release/{name}.wasm"
        ))
    };
    let data = tempfile::tempdir()?;
    let toml = format!(
        r#"
[[service]]
name = "pub"
route = "/pub"
component = {{ path = {publish:?}, version = "bench" }}
publishes = ["bench.events"]

[[service]]
name = "sub"
route = "/sub"
component = {{ path = {subscribe:?}, version = "bench" }}
config = {{ record_order = "false" }}
[[service.subscribe]]
topic = "bench.events"
max_deliver = 5
backoff_ms = 10
"#,
        publish = wasm("test_publish").display().to_string(),
        subscribe = wasm("test_subscriber").display().to_string(),
    );
    let manifest = Manifest::from_toml(
        &toml,
        &data.path().join("bench.toml"),
        data.path().to_path_buf(),
    )?;
    let mut config = HostConfig::new(manifest);
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_listen = "127.0.0.1:0".parse()?;
    config.data_dir = data.path().to_path_buf();
    let host = microhost::start(config).await?;
    let base = format!("http://{}", host.gateway_addr);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next, url) = (
            client.clone(),
            next.clone(),
            format!("{base}/pub/pub/bench.events"),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= events {
                    return Ok::<_, anyhow::Error>(());
                }
                let (status, body) = send(
                    &client,
                    http::Method::POST,
                    &url,
                    Bytes::from(format!("b{i}")),
                )
                .await?;
                anyhow::ensure!(
                    status == 201,
                    "publish {i}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let published_in = started.elapsed();

    // Wait for the subscriber to catch up (lag 0).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let cursor = host.cursor("bench.events", "sub")?;
        if cursor as usize >= events {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "subscriber stuck at {cursor}/{events}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered_in = started.elapsed();

    let loaded = latencies(&client, &base, "b", events).await?;

    // Unloaded: one event at a time, each published after the previous one was handled.
    let url = format!("{base}/pub/pub/bench.events");
    for i in 0..samples {
        let (status, body) = send(
            &client,
            http::Method::POST,
            &url,
            Bytes::from(format!("l{i}")),
        )
        .await?;
        anyhow::ensure!(
            status == 201,
            "publish l{i}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        while (host.cursor("bench.events", "sub")? as usize) < events + i + 1 {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    let unloaded = latencies(&client, &base, "l", samples).await?;
    let report = serde_json::json!({
        "benchmark": "bus: durable publish -> deliver",
        "events": events,
        "clients": clients,
        "publish_per_sec": (events as f64 / published_in.as_secs_f64()).round(),
        "end_to_end_per_sec": (events as f64 / delivered_in.as_secs_f64()).round(),
        "latency_samples": samples,
        "latency_p50_ms": percentile(&unloaded, 50.0) as f64 / 1000.0,
        "latency_p99_ms": percentile(&unloaded, 99.0) as f64 / 1000.0,
        "latency_max_ms": unloaded.last().copied().unwrap_or(0) as f64 / 1000.0,
        "saturated_latency_p50_ms": percentile(&loaded, 50.0) as f64 / 1000.0,
        "saturated_latency_p99_ms": percentile(&loaded, 99.0) as f64 / 1000.0,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("bus.json"), serde_json::to_string_pretty(&report)?)?;
    host.shutdown().await;
    Ok(())
}
