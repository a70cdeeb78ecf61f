//! The HTTP server loop shared by the gateway and the admin API: HTTP/1.1 and h2 (h2c
//! in clear text, ALPN `h2` over TLS), optional TLS termination with rustls, limits on
//! connections, header count and size, a header-read timeout (slowloris; it also closes
//! idle keep-alive connections), and graceful shutdown that lets in-flight requests end.
//! Malformed requests (bad framing, conflicting lengths, obfuscated
//! `Transfer-Encoding`, `Transfer-Encoding` in HTTP/1.0) are answered 400 (431 for too
//! many or too large headers) by hyper and never reach a service.

use anyhow::Context as _;
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A client must send a request's whole header section within this time; an idle
    /// keep-alive connection is closed after it too. Also bounds a TLS handshake.
    pub header_read_timeout: Duration,
    /// Most headers in one request (more: 431).
    pub max_headers: usize,
    /// Largest request head (request line and headers), in bytes (more: 431).
    pub max_header_bytes: usize,
    /// Most open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_grace: Duration,
    /// A request's whole body must arrive within this time (more: 408 and the
    /// connection closed), so a client trickling bytes cannot hold a slot for long.
    pub body_read_timeout: Duration,
    /// After `body_rate_grace`, a request body must have arrived at this many bytes a
    /// second on average since it began (less: 408 and the connection closed); 0 turns
    /// the check off. Catches a trickle long before `body_read_timeout` does.
    pub min_body_rate: u64,
    /// How long a body may take before `min_body_rate` applies (TCP slow start, a
    /// client's pause before it sends).
    pub body_rate_grace: Duration,
    /// Most concurrent streams on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            min_body_rate: 240,
            body_rate_grace: Duration::from_secs(5),
            max_concurrent_streams: 100,
        }
    }
}

/// A TLS server configuration from PEM files: the certificate chain and its private key.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("failed to read TLS certificate {cert:?}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{cert:?} is not a PEM certificate chain"))?;
    anyhow::ensure!(!certs.is_empty(), "{cert:?} holds no PEM certificate");
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("failed to read a PEM private key from {key:?}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener` until `shutdown` turns true, serving each with the
/// service `make(peer)` returns (over TLS if `tls` is set); then stops accepting and
/// waits (up to the grace period) for open connections to finish their requests.
pub(crate) async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    make: M,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) where
    M: Fn(SocketAddr) -> S + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let mut stopped = std::pin::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tracing::warn!(server = name, %peer, limit = limits.max_connections, "connection limit reached; closing the new connection");
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let service = make(peer);
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let result = match tls {
                            None => {
                                let conn = builder.serve_connection(TokioIo::new(stream), service);
                                watcher.watch(conn.into_owned()).await
                            }
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(
                                    limits.header_read_timeout,
                                    acceptor.accept(stream),
                                )
                                .await;
                                match handshake {
                                    Ok(Ok(stream)) => {
                                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                                        watcher.watch(conn.into_owned()).await
                                    }
                                    Ok(Err(e)) => {
                                        tracing::debug!(server = name, %peer, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!(server = name, %peer, "TLS handshake timed out");
                                        return;
                                    }
                                }
                            }
                        };
                        if let Err(e) = result {
                            tracing::debug!(server = name, %peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(server = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut stopped => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(server = name, "all connections closed"),
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(server = name, "connections still open after the shutdown grace period; closing them");
        }
    }
}
