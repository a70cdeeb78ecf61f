//! Edge hardening over raw TCP: a request-smuggling corpus, slowloris, 413 before the
//! body is read, header limits (431), the connection limits (in all and per client
//! address), the body timeout and minimum rate (408), idle HTTP/1 and h2 connections;
//! TLS termination; `/metrics`.

use crate::support::{Host, Svc, config, data_dir, metric};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `addr` from the loopback address `from` (all of 127/8 is loopback on
/// Linux), so one test can be many clients.
pub(crate) async fn connect_from(
    from: std::net::Ipv4Addr,
    addr: std::net::SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    socket.connect(addr).await
}

/// Reads until the server closes the connection (`Some(elapsed since started)`), or
/// `within` passes (`None`); what arrived goes into `received`.
async fn closed_within(
    stream: &mut TcpStream,
    started: Instant,
    within: Duration,
    received: &mut Vec<u8>,
) -> Option<Duration> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Writes `raw`, then reads until the server closes the connection or goes quiet for
/// `quiet`; returns what it sent back.
async fn exchange(host: &Host, raw: &[u8], quiet: Duration) -> anyhow::Result<(String, bool)> {
    let mut stream = TcpStream::connect(host.running.gateway_addr).await?;
    stream.write_all(raw).await?;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Ok((String::from_utf8_lossy(&received).into_owned(), closed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_corpus_is_refused_or_closed() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL then TE",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE then CL",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "duplicate CL",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\n{smuggled}"
            ),
        ),
        (
            "CL list",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 37\r\n\r\n{smuggled}"),
        ),
        (
            "signed CL",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +37\r\n\r\n{smuggled}"),
        ),
        (
            "TE not chunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE chunked then identity",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE list not ending in chunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "space before colon",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE with a vertical tab",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "HTTP/1.0 with TE",
            format!(
                "POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "bad chunk size",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n{smuggled}"
            ),
        ),
        (
            "header folding",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
        ),
    ];
    for (name, raw) in cases {
        let before = host.served("echo").await?;
        let (answer, closed) = exchange(&host, raw.as_bytes(), Duration::from_secs(3)).await?;
        let statuses: Vec<&str> = answer
            .match_indices("HTTP/1.")
            .filter_map(|(i, _)| answer.get(i + 9..i + 12))
            .collect();
        let served = host.served("echo").await? - before;
        assert!(
            statuses.first() == Some(&"400") || closed,
            "{name}: neither 400 nor closed: {answer}"
        );
        assert!(
            statuses.len() <= 1,
            "{name}: more than one response: {answer}"
        );
        assert!(served <= 1, "{name}: the service was called {served} times");
        assert!(
            !answer.contains("/smuggled"),
            "{name}: the smuggled request was served"
        );
        println!("{name}: {statuses:?}, closed = {closed}, reached the service {served} times");
    }
    // The host is fine afterwards.
    assert_eq!(host.get("/after").await?.status, 200);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_while_others_are_served() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Arc::new(Host::start(&[Svc::new("echo", "/", "test-echo")], dir.path()).await?);
    // One header byte every 100 ms: progress does not extend the 1 s deadline.
    let addr = host.running.gateway_addr;
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await?;
        let started = Instant::now();
        let request = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in request.iter() {
            if stream.write_all(&[*byte]).await.is_err() {
                return anyhow::Ok(Some(started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut buf = [0u8; 64];
        Ok(match stream.read(&mut buf).await {
            Ok(0) | Err(_) => Some(started.elapsed()),
            Ok(_) => None,
        })
    });
    let mut served = 0;
    while !slow.is_finished() {
        assert_eq!(host.get("/ok").await?.status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = slow.await??;
    let cut = cut.ok_or_else(|| anyhow::anyhow!("the slow client was answered"))?;
    assert!(cut < Duration::from_secs(3), "cut off after {cut:?}");
    assert!(
        served >= 5,
        "only {served} normal requests during the attack"
    );
    if let Ok(host) = Arc::try_unwrap(host) {
        host.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_413_before_it_is_sent() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[Svc::new("echo", "/", "test-echo").max_body_kib(1)],
        dir.path(),
    )
    .await?;
    // 10 MB announced, 10 bytes sent: the answer comes without waiting for the rest.
    let mut stream = TcpStream::connect(host.running.gateway_addr).await?;
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n0123456789",
        )
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    // Chunked: refused once past the limit, while the client is still sending.
    let mut stream = TcpStream::connect(host.running.gateway_addr).await?;
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    let chunk = [b"800\r\n".as_slice(), &[b'z'; 0x800], b"\r\n"].concat();
    stream.write_all(&chunk).await?;
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(host.served("echo").await?, 0);
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431_and_connections_are_limited() -> anyhow::Result<()> {
    let dir = data_dir();
    let mut cfg = config(&[Svc::new("echo", "/", "test-echo")], dir.path())?;
    cfg.limits.max_connections = 3;
    cfg.limits.header_read_timeout = Duration::from_secs(2);
    let host = Host::start_with(cfg).await?;

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!("GET /a HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let (answer, _) = exchange(&host, raw.as_bytes(), Duration::from_secs(3)).await?;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let big = "b".repeat(100 * 1024);
    let raw = format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let (answer, _) = exchange(&host, raw.as_bytes(), Duration::from_secs(3)).await?;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(host.served("echo").await?, 0);

    // Three idle connections fill the limit; a fourth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(host.running.gateway_addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(host.running.gateway_addr).await?;
    fourth
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), fourth.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection over the limit was served");
    assert_eq!(
        metric(
            &host.metrics().await?,
            "microhost_connections_refused_total",
            &[("server", "gateway"), ("reason", "max_connections")]
        ),
        1.0
    );
    drop(idle);
    crate::assert_eventually!(
        Duration::from_secs(5),
        host.get("/a").await.is_ok_and(|r| r.status == 200),
        "connections were not freed"
    );
    host.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminates_at_the_gateway() -> anyhow::Result<()> {
    let dir = data_dir();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem())?;
    std::fs::write(&key_path, certified.signing_key.serialize_pem())?;
    let mut cfg = config(&[Svc::new("echo", "/", "test-echo")], dir.path())?;
    cfg.tls = Some(microhost::TlsFiles {
        cert: cert_path.clone(),
        key: key_path,
    });
    let host = Host::start_with(cfg).await?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(host.running.gateway_addr).await?;
    let tls = connector
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let request = http::Request::builder()
        .uri("/secure")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("x-microhost-service")
            .and_then(|v| v.to_str().ok()),
        Some("echo@v1")
    );
    let body = response.into_body().collect().await?.to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(echo["path"], "/secure");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let (answer, _) = exchange(
        &host,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await?;
    assert!(!answer.contains("200 OK"), "{answer}");
    host.shutdown().await;

    // A key that does not exist: a clear start-up error.
    let mut cfg = config(&[Svc::new("echo", "/", "test-echo")], dir.path())?;
    cfg.tls = Some(microhost::TlsFiles {
        cert: cert_path,
        key: dir.path().join("missing.pem"),
    });
    let err = microhost::start(cfg)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("missing.pem"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() -> anyhow::Result<()> {
    let dir = data_dir();
    let host = Host::start(
        &[
            Svc::new("echo", "/", "test-echo"),
            Svc::new("pub", "/pub", "test-publish").publishes("orders.created"),
        ],
        dir.path(),
    )
    .await?;
    // Behind the admin token.
    let r = host
        .send(
            http::Method::GET,
            &host.admin_url("/metrics"),
            Bytes::new(),
            None,
        )
        .await?;
    assert_eq!(r.status, 401);

    let ok = [("service", "echo"), ("version", "v1"), ("status", "200")];
    let before = host.metrics().await?;
    let base = metric(&before, "microhost_requests_total", &ok);
    for _ in 0..5 {
        assert_eq!(host.get("/m").await?.status, 200);
    }
    assert_eq!(host.get("/m?status=404").await?.status, 404);
    let after = host.metrics().await?;
    assert_eq!(metric(&after, "microhost_requests_total", &ok), base + 5.0);
    assert_eq!(
        metric(
            &after,
            "microhost_requests_total",
            &[("service", "echo"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        metric(&after, "microhost_request_duration_seconds_count", &ok),
        base + 5.0
    );
    assert!(
        after.contains("microhost_request_duration_seconds_bucket{"),
        "{after}"
    );
    assert_eq!(
        metric(&after, "microhost_breaker_state", &[("service", "echo")]),
        0.0
    );
    assert!(
        after.contains("microhost_in_flight{service=\"echo\"} 0"),
        "{after}"
    );

    // Bus counters.
    let r = host.post("/pub/pub/orders.created", "one").await?;
    assert!(r.status < 300, "{}", r.text());
    let text = host.metrics().await?;
    assert_eq!(
        metric(
            &text,
            "microhost_bus_published_total",
            &[("topic", "orders.created")]
        ),
        1.0
    );
    host.shutdown().await;
    Ok(())
}

/// A body trickled in slower than the body timeout gets `408` and its connection closed,
/// within the timeout: a slow client holds a connection slot for that long at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() -> anyhow::Result<()> {
    let dir = data_dir();
    let mut cfg = config(&[Svc::new("echo", "/", "test-echo")], dir.path())?;
    cfg.limits.body_read_timeout = Duration::from_secs(1);
    let host = Host::start_with(cfg).await?;
    let started = Instant::now();
    // 100 bytes declared, 2 sent, the rest never.
    let raw = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab";
    let (answer, closed) = exchange(&host, raw, Duration::from_secs(5)).await?;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert!(closed, "the connection stayed open");
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    assert_eq!(host.served("echo").await?, 0, "the service never saw it");
    assert_eq!(host.post("/fine", "whole").await?.status, 200);
    host.shutdown().await;
    Ok(())
}

/// A body that keeps arriving, but below the minimum rate once the grace period is over,
/// is cut off then (408, closed) instead of at the body timeout; a body that keeps the
/// rate is served however long it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_once_below_the_minimum_rate() -> anyhow::Result<()> {
    let dir = data_dir();
    let mut cfg = config(&[Svc::new("echo", "/", "test-echo")], dir.path())?;
    cfg.limits.body_read_timeout = Duration::from_secs(30);
    cfg.limits.min_body_rate = 100;
    cfg.limits.body_rate_grace = Duration::from_secs(1);
    let host = Host::start_with(cfg).await?;

    // One byte every 200 ms: 5 bytes a second against a minimum of 100.
    let mut stream = TcpStream::connect(host.running.gateway_addr).await?;
    let started = Instant::now();
    stream
        .write_all(b"POST /trickle HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .await?;
    let trickle = async {
        for _ in 0..100 {
            if stream.write_all(b"z").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut probe = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await {
                Ok(Ok(n)) => return String::from_utf8_lossy(&probe[..n]).into_owned(),
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
        String::new()
    };
    let answer = trickle.await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("arrived too slowly"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let mut rest = Vec::new();
    let closed = closed_within(
        &mut stream,
        Instant::now(),
        Duration::from_secs(3),
        &mut rest,
    )
    .await;
    assert!(closed.is_some(), "the connection stayed open");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "cut off after {took:?}, not after the grace period"
    );
    println!("a 5 B/s body was cut off after {took:?} (grace 1 s, minimum 100 B/s)");

    // 250 bytes every 500 ms: 500 a second, for 2.5 s.
    let mut stream = TcpStream::connect(host.running.gateway_addr).await?;
    stream
        .write_all(b"POST /steady HTTP/1.1\r\nHost: x\r\nContent-Length: 1250\r\n\r\n")
        .await?;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream.write_all(&[b'y'; 250]).await?;
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        host.served("echo").await?,
        1,
        "only the steady body was served"
    );
    host.shutdown().await;
    Ok(())
}

/// Connections with no request in flight are closed after the idle timeout, HTTP/1
/// keep-alive and h2 (whose pings would keep it open) alike; one that never sends a
/// request after the header timeout; one whose request takes longer than the idle
/// timeout is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_http1_and_h2() -> anyhow::Result<()> {
    let dir = data_dir();
    let mut cfg = config(
        &[
            Svc::new("echo", "/", "test-echo"),
            Svc::new("slow", "/slow", "test-slow"),
        ],
        dir.path(),
    )?;
    cfg.limits.header_read_timeout = Duration::from_secs(3);
    cfg.limits.idle_timeout = Duration::from_secs(1);
    let host = Host::start_with(cfg).await?;
    let addr = host.running.gateway_addr;

    // HTTP/1.1 keep-alive: answered, then closed after a second of nothing.
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !String::from_utf8_lossy(&received).contains("\"path\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed before the answer");
        received.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    let closed = closed_within(&mut stream, answered, Duration::from_secs(5), &mut received).await;
    let h1 = closed.ok_or_else(|| anyhow::anyhow!("the idle HTTP/1 connection stayed open"))?;
    assert!(
        h1 >= Duration::from_millis(900) && h1 < Duration::from_millis(2500),
        "HTTP/1 closed {h1:?} after its answer"
    );

    // h2 (prior knowledge): answered, then the connection ends.
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await?;
    let conn = tokio::spawn(conn);
    let request = || {
        http::Request::builder()
            .uri(format!("http://{addr}/slow?ms=1500"))
            .body(Empty::<Bytes>::new())
    };
    // A request in flight for longer than the idle timeout holds the connection open.
    let response = sender.send_request(request()?).await?;
    assert_eq!(response.status(), 200, "a long request is not idle");
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .map_err(|_| anyhow::anyhow!("the idle h2 connection stayed open"))???;
    let h2 = answered.elapsed();
    assert!(
        h2 >= Duration::from_millis(900) && h2 < Duration::from_millis(2500),
        "h2 closed {h2:?} after its answer"
    );

    // Connected, and nothing sent: closed after the header timeout.
    let mut silent = TcpStream::connect(addr).await?;
    let started = Instant::now();
    let closed = closed_within(
        &mut silent,
        started,
        Duration::from_secs(6),
        &mut Vec::new(),
    )
    .await;
    let silent = closed.ok_or_else(|| anyhow::anyhow!("a silent connection stayed open"))?;
    assert!(
        silent >= Duration::from_millis(2900) && silent < Duration::from_millis(4500),
        "a silent connection closed after {silent:?}"
    );
    println!("idle HTTP/1 closed after {h1:?}, idle h2 after {h2:?}, silent after {silent:?}");
    host.shutdown().await;
    Ok(())
}

/// One client address gets `max_connections_per_ip` connections; more from it are closed
/// at accept (and counted), while other addresses are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_address_are_capped() -> anyhow::Result<()> {
    let dir = data_dir();
    let mut cfg = config(&[Svc::new("echo", "/", "test-echo")], dir.path())?;
    cfg.limits.max_connections_per_ip = 2;
    cfg.limits.header_read_timeout = Duration::from_secs(10);
    let host = Host::start_with(cfg).await?;
    let addr = host.running.gateway_addr;
    let greedy = std::net::Ipv4Addr::new(127, 0, 0, 3);

    let held = [
        connect_from(greedy, addr).await?,
        connect_from(greedy, addr).await?,
    ];
    let mut third = connect_from(greedy, addr).await?;
    third
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let closed = closed_within(
        &mut third,
        Instant::now(),
        Duration::from_secs(2),
        &mut Vec::new(),
    )
    .await;
    assert!(
        closed.is_some(),
        "a third connection from one address was kept"
    );

    // Another address, and the test's own, are served.
    let mut other = connect_from(std::net::Ipv4Addr::new(127, 0, 0, 4), addr).await?;
    other
        .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), other.read(&mut buf)).await??;
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(host.get("/c").await?.status, 200);
    assert_eq!(
        metric(
            &host.metrics().await?,
            "microhost_connections_refused_total",
            &[("server", "gateway"), ("reason", "max_connections_per_ip")]
        ),
        1.0
    );

    // A closed connection gives its place back.
    drop(held);
    crate::assert_eventually!(
        Duration::from_secs(5),
        {
            let mut again = connect_from(greedy, addr).await?;
            again
                .write_all(b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .ok();
            let mut buf = [0u8; 64];
            matches!(
                tokio::time::timeout(Duration::from_secs(2), again.read(&mut buf)).await,
                Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200")
            )
        },
        "the address never got a connection back"
    );
    host.shutdown().await;
    Ok(())
}
