//! The HTTP server loop shared by the gateway and the admin API: HTTP/1.1 and h2 (h2c
//! in clear text, ALPN `h2` over TLS), optional TLS termination with rustls, limits on
//! connections (in all and per client address), header count and size, a header-read
//! timeout (slowloris), an idle timeout for connections with no request in flight, and
//! graceful shutdown that lets in-flight requests end.
//! Malformed requests (bad framing, conflicting lengths, obfuscated
//! `Transfer-Encoding`, `Transfer-Encoding` in HTTP/1.0) are answered 400 (431 for too
//! many or too large headers) by hyper and never reach a service.

use anyhow::Context as _;
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A client must send a request's whole header section within this time. A new
    /// connection must bring its first request within it too (and a TLS handshake
    /// finish within it), and hyper applies it to an HTTP/1 keep-alive connection
    /// waiting for its next request.
    pub header_read_timeout: Duration,
    /// Most headers in one request (more: 431).
    pub max_headers: usize,
    /// Largest request head (request line and headers), in bytes (more: 431).
    pub max_header_bytes: usize,
    /// Most open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Most open connections from one client address (an IPv6 client: its /64
    /// network); more are closed as soon as they are accepted.
    pub max_connections_per_ip: usize,
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
    /// A connection with no request in flight for this long is closed: an idle h2
    /// connection (whose pings keep it alive otherwise) or HTTP/1 keep-alive one.
    pub idle_timeout: Duration,
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
            max_connections_per_ip: 256,
            shutdown_grace: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            min_body_rate: 240,
            body_rate_grace: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 100,
        }
    }
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` were open.
    Connections,
    /// `max_connections_per_ip` were open from the client's address.
    PerClient,
}

impl Refusal {
    /// The `reason` label of `microhost_connections_refused_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::PerClient => "max_connections_per_ip",
        }
    }
}

/// Connections the kernel queues for `accept` (tokio's default is 1024). In a burst
/// of connections, one over the queue has its SYN dropped and its client tries again
/// after a second, normal clients included; a longer queue lets the accept loop, which
/// refuses what is over the limits at once, see them all. The kernel caps it at
/// `net.core.somaxconn` (4096 on current Linux).
const ACCEPT_BACKLOG: u32 = 4096;

/// A listener on `addr` with the [`ACCEPT_BACKLOG`].
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted host can bind while old connections of
    // the last one are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
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

impl ServerLimits {
    /// The HTTP/1 and HTTP/2 settings every connection gets: header-read timeout,
    /// header count and size, h2 stream cap and keep-alive.
    pub(crate) fn http_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(self.max_headers)
            .max_buf_size(self.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.max_concurrent_streams)
            .keep_alive_interval(self.header_read_timeout)
            .keep_alive_timeout(self.header_read_timeout);
        builder
    }
}

/// Accepts connections on `listener` until `shutdown` turns true, serving each with the
/// service `make(peer)` returns (over TLS if `tls` is set); a connection over a limit is
/// closed at once and reported to `refused`. Then stops accepting and waits (up to the
/// grace period) for open connections to finish their requests.
pub(crate) async fn serve<M, S, B, R>(
    name: &'static str,
    listener: TcpListener,
    make: M,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    refused: R,
) where
    M: Fn(SocketAddr) -> S + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    R: Fn(Refusal) + Send + 'static,
{
    let builder = limits.http_builder();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::new(limits.max_connections_per_ip));
    // Every connection task holds a sender; when all are gone, the receiver says so.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let stop = shutdown.clone();
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
                        refused(Refusal::Connections);
                        drop(stream);
                        continue;
                    };
                    let Some(client) = per_client.admit(peer.ip()) else {
                        tracing::debug!(server = name, %peer, limit = limits.max_connections_per_ip, "connection limit of the client address reached; closing the new connection");
                        refused(Refusal::PerClient);
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let activity = Arc::new(Activity::new(Instant::now()));
                    let service = Tracked {
                        inner: make(peer),
                        activity: activity.clone(),
                    };
                    let builder = builder.clone();
                    let tls = tls.clone();
                    let mut stop = stop.clone();
                    let open = open.clone();
                    tokio::spawn(async move {
                        let _held = (permit, client, open);
                        let result = match tls {
                            None => {
                                let conn = builder.serve_connection(TokioIo::new(stream), service);
                                drive(conn, &activity, &limits, &mut stop).await
                            }
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(
                                    limits.header_read_timeout,
                                    acceptor.accept(stream),
                                )
                                .await;
                                match handshake {
                                    Ok(Ok(stream)) => {
                                        activity.restart(Instant::now());
                                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                                        drive(conn, &activity, &limits, &mut stop).await
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
                        match result {
                            Ok(Ended::Closed) => {}
                            Ok(Ended::Idle) => tracing::debug!(server = name, %peer, "closed an idle connection"),
                            Err(e) => tracing::debug!(server = name, %peer, error = %e, "connection ended with an error"),
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
    drop(open);
    tokio::select! {
        _ = all_closed.recv() => tracing::debug!(server = name, "all connections closed"),
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(server = name, "connections still open after the shutdown grace period; closing them");
        }
    }
}

/// How a connection's future ended without an error.
enum Ended {
    /// The client or HTTP closed it (or shutdown did, gracefully).
    Closed,
    /// It had no request in flight for too long.
    Idle,
}

/// Serves one connection to its end: on shutdown, or once it has been idle too long
/// (see [`Activity::close_at`]), it is asked to close gracefully (h2: `GOAWAY`; HTTP/1:
/// no keep-alive after the response in progress, closed at once when idle) and is
/// polled until it has.
async fn drive<C>(
    conn: C,
    activity: &Activity,
    limits: &ServerLimits,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, C::Error>
where
    C: GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing = None;
    loop {
        // While a request is in flight there is nothing to time; look again later.
        let wake = activity
            .close_at(limits.header_read_timeout, limits.idle_timeout)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => return result.map(|()| closing.unwrap_or(Ended::Closed)),
            _ = stop.wait_for(|stop| *stop), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Ended::Closed);
            }
            // An answer moves the deadline (the idle time can be shorter than the first).
            () = activity.idled.notified(), if closing.is_none() => {}
            () = tokio::time::sleep_until(wake), if closing.is_none() => {
                let due = activity.close_at(limits.header_read_timeout, limits.idle_timeout);
                if due.is_some_and(|due| due <= Instant::now()) {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Ended::Idle);
                }
            }
        }
    }
}

/// What a connection is doing, for its idle timer.
struct Activity {
    state: parking_lot::Mutex<ActivityState>,
    /// Woken when the last request in flight is answered.
    idled: tokio::sync::Notify,
}

#[derive(Debug, Clone, Copy)]
struct ActivityState {
    /// Requests whose answer is not ready yet (more than one on h2).
    in_flight: usize,
    /// Requests begun on the connection so far.
    begun: u64,
    /// When the connection last had nothing in flight (its start, or the last answer).
    idle_since: Instant,
}

impl ActivityState {
    /// When an idle connection is due to close: `first` after its start while it has
    /// brought no request, `idle` after its last answer; `None` while a request is in
    /// flight (the body and service timeouts bound those).
    fn close_at(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight > 0 {
            return None;
        }
        Some(self.idle_since + if self.begun == 0 { first } else { idle })
    }
}

impl Activity {
    fn new(now: Instant) -> Activity {
        Activity {
            state: parking_lot::Mutex::new(ActivityState {
                in_flight: 0,
                begun: 0,
                idle_since: now,
            }),
            idled: tokio::sync::Notify::new(),
        }
    }

    /// The connection starts (again) from `now`: after a TLS handshake.
    fn restart(&self, now: Instant) {
        self.state.lock().idle_since = now;
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut state = self.state.lock();
        state.in_flight += 1;
        state.begun += 1;
        InFlight(self.clone())
    }

    fn close_at(&self, first: Duration, idle: Duration) -> Option<Instant> {
        self.state.lock().close_at(first, idle)
    }
}

/// A request in flight on its connection, until its answer is ready (or it is dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            drop(state);
            self.0.idled.notify_one();
        }
    }
}

/// A connection's service, counting its requests in flight.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, Req> hyper::service::Service<Req> for Tracked<S>
where
    S: hyper::service::Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: Req) -> Self::Future {
        let in_flight = self.activity.begin();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        })
    }
}

/// Open connections per client address.
struct PerClient {
    max: usize,
    open: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its client's count, given back when dropped.
struct ClientConnection {
    owner: Arc<PerClient>,
    client: IpAddr,
}

impl PerClient {
    fn new(max: usize) -> PerClient {
        PerClient {
            max,
            open: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, unless its client has `max` open.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientConnection> {
        let client = client_of(ip);
        let mut open = self.open.lock();
        let count = open.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientConnection {
            owner: self.clone(),
            client,
        })
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock();
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Whose connection count `ip` takes from: an IPv4 address (also when mapped into
/// IPv6), or an IPv6 address's /64, the smallest network one subscriber usually gets
/// (one host can use any address in it).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_64() -> anyhow::Result<()> {
        let ip = |s: &str| s.parse::<IpAddr>();
        assert_eq!(client_of(ip("10.0.0.7")?), ip("10.0.0.7")?);
        assert_eq!(client_of(ip("::ffff:10.0.0.7")?), ip("10.0.0.7")?);
        assert_eq!(
            client_of(ip("2001:db8:1:2:aaaa::1")?),
            ip("2001:db8:1:2::")?
        );
        assert_eq!(
            client_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")?),
            client_of(ip("2001:db8:1:2::9")?)
        );
        assert_ne!(client_of(ip("2001:db8:1:3::1")?), ip("2001:db8:1:2::")?);
        Ok(())
    }

    #[test]
    fn each_client_gets_its_own_connections_back_when_they_close() -> anyhow::Result<()> {
        let limit = Arc::new(PerClient::new(2));
        let a: IpAddr = "10.0.0.1".parse()?;
        let b: IpAddr = "10.0.0.2".parse()?;
        let first = limit.admit(a);
        let second = limit.admit(a);
        assert!(first.is_some() && second.is_some());
        assert!(limit.admit(a).is_none(), "a third from the same address");
        assert!(
            limit.admit(b).is_some(),
            "another address has its own count"
        );
        drop(first);
        let again = limit.admit(a);
        assert!(again.is_some(), "a closed connection frees its place");
        drop((second, again));
        assert!(limit.open.lock().is_empty(), "counts at zero are forgotten");
        Ok(())
    }

    #[test]
    fn an_idle_connection_closes_after_its_first_or_idle_time() {
        let start = Instant::now();
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let mut state = ActivityState {
            in_flight: 0,
            begun: 0,
            idle_since: start,
        };
        assert_eq!(
            state.close_at(first, idle),
            Some(start + first),
            "no request yet: the header time"
        );
        state.in_flight = 1;
        state.begun = 1;
        assert_eq!(state.close_at(first, idle), None, "a request in flight");
        state.in_flight = 0;
        state.idle_since = start + Duration::from_secs(3);
        assert_eq!(
            state.close_at(first, idle),
            Some(start + Duration::from_secs(63)),
            "after an answer: the idle time from it"
        );
    }

    #[test]
    fn requests_in_flight_hold_the_idle_timer() {
        let activity = Arc::new(Activity::new(Instant::now()));
        let (first, idle) = (Duration::from_secs(1), Duration::from_secs(5));
        let one = activity.begin();
        let two = activity.begin();
        drop(one);
        assert_eq!(activity.close_at(first, idle), None, "one still in flight");
        let before = Instant::now();
        drop(two);
        let after = Instant::now();
        let due = activity.close_at(first, idle);
        assert!(
            due.is_some_and(|due| due >= before + idle && due <= after + idle),
            "idle from the last answer: {due:?}"
        );
    }
}
