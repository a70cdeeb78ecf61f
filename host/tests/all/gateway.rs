//! The edge: routing, 404, body limits, header timeout, graceful shutdown, config.

use crate::support::{Host, Svc, data_dir};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_prefix_and_answers_404_elsewhere() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("api", "/api", "test-echo").config("greeting", "from api"),
            Svc::new("deep", "/api/deep", "test-echo").config("greeting", "from deep"),
        ],
        dir.path(),
    )
    .await?;

    let r = host.get("/api/thing?x=1").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.served_by(), Some("api@v1"));
    let echo = r.json();
    assert_eq!(echo["path"], "/api/thing");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(
        echo["greeting"], "from api",
        "config values reach the guest"
    );

    let r = host.get("/api/deep/er").await?;
    assert_eq!(r.served_by(), Some("deep@v1"));
    assert_eq!(r.json()["greeting"], "from deep");

    // A prefix matches whole segments only.
    let r = host.get("/api/deeper").await?;
    assert_eq!(r.served_by(), Some("api@v1"));

    let r = host.get("/nothing/here").await?;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let problem = r.json();
    assert_eq!(problem["status"], 404);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("/nothing/here")
    );
    assert_eq!(r.served_by(), None);

    let r = host.post("/api/echo", "hello body").await?;
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(r.json()["body"], "hello body");
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/", "test-echo").max_body_kib(1)],
        dir.path(),
    )
    .await?;

    let r = host.post("/small", vec![b'a'; 1024]).await?;
    assert_eq!(r.status, 200, "a body at the limit passes");

    let r = host.post("/big", vec![b'a'; 1025]).await?;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["service"], "echo");

    // Chunked, with no Content-Length: cut off while reading.
    // One write, so the server has it all before it answers (and closes).
    let mut request =
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2 {
        request.extend_from_slice(b"258\r\n");
        request.extend_from_slice(&[b'b'; 0x258]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(host.running.gateway_addr).await?;
    stream.write_all(&request).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_disconnected() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?;

    // Half a request, then silence: the 1 s header-read timeout must end it.
    let mut stream = TcpStream::connect(host.running.gateway_addr).await?;
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was not closed within 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Normal requests are served all the while.
    assert_eq!(host.get("/ok").await?.status, 200);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("slow", "/", "test-slow")], dir.path()).await?;
    let url = host.url("/sleep?ms=700");
    let client = crate::support::client();
    let in_flight = tokio::spawn(async move {
        crate::support::send(&client, http::Method::GET, &url, bytes::Bytes::new(), None).await
    });
    // Let the request reach the guest, then ask the host to stop.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let addr = host.running.gateway_addr;
    host.shutdown().await;

    let r = in_flight.await??;
    assert_eq!(
        r.status,
        200,
        "the in-flight request finished: {}",
        r.text()
    );
    assert_eq!(r.json()["slept_ms"], 700);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
    Ok(())
}
