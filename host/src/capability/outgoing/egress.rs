//! Where a granted outside call may connect, and the connection itself. The addresses
//! are checked after the name is resolved and the connection goes to a checked address,
//! so no DNS answer (nor a rebinding one) leads a guest inside: a name is never
//! connected to a loopback, private, link-local or otherwise non-public address (an
//! entry must name such an address as an IP literal), and no entry, IP literal
//! included, reaches the host's own listeners (gateway and admin).

use super::budget::{Direction, HttpBudget, Metered};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// Longest wait for a name lookup, a connection (TCP and TLS), the first byte of an
/// answer and between two of its frames, unless the guest asks for less. The
/// invocation's own timeout bounds them all anyway.
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the host's outgoing connections know of the host: its own listeners and the
/// TLS roots. One per host, shared by every invocation.
#[derive(Debug)]
pub(crate) struct Egress {
    /// Ports the host listens on (gateway, admin). An address of this machine on one
    /// of them is the host itself.
    own_ports: Vec<u16>,
    /// The web's roots (webpki-roots), as `wasi:http` has them by default.
    tls: Arc<rustls::ClientConfig>,
}

impl Default for Egress {
    fn default() -> Egress {
        Egress::new(&[])
    }
}

/// Why a granted host and port may not be connected to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{addr} is one of the host's own listeners")]
    Own { addr: SocketAddr },
    #[error(
        "{name:?} resolves only to addresses that are not public ({addrs:?}); \
         an `allowed_hosts` entry must name such an address as an IP literal"
    )]
    Internal { name: String, addrs: Vec<IpAddr> },
    #[error("{name:?} does not resolve: {why}")]
    Lookup { name: String, why: String },
    #[error("looking up {name:?} timed out")]
    LookupTimeout { name: String },
}

impl Refused {
    /// What the guest sees.
    pub(crate) fn code(&self) -> HttpError {
        match self {
            Refused::Own { .. } | Refused::Internal { .. } => HttpError::DestinationIpProhibited,
            Refused::Lookup { .. } => HttpError::DnsError {
                rcode: Some("address not available".to_string()),
                info_code: None,
            },
            Refused::LookupTimeout { .. } => HttpError::DnsTimeout,
        }
    }
}

/// `host` as the URL spells it (`[v6]` bracketed) when it is an IP literal.
pub(crate) fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

impl Egress {
    pub(crate) fn new(listeners: &[SocketAddr]) -> Egress {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports rustls' default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut own_ports: Vec<u16> = listeners.iter().map(SocketAddr::port).collect();
        own_ports.sort_unstable();
        own_ports.dedup();
        Egress {
            own_ports,
            tls: Arc::new(tls),
        }
    }

    /// Whether a connection to `addr` would reach the host itself: an address of this
    /// machine on a port the host listens on.
    fn is_own(&self, addr: SocketAddr) -> bool {
        self.own_ports.contains(&addr.port()) && on_this_machine(addr.ip())
    }

    /// Of the addresses `resolved` for the request's host, those it may connect to:
    /// never the host's own listeners, and for a name (`literal` false) only public
    /// addresses.
    fn permitted(
        &self,
        name: &str,
        literal: bool,
        resolved: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        if let Some(addr) = resolved.iter().copied().find(|a| self.is_own(*a)) {
            return Err(Refused::Own { addr });
        }
        if literal {
            return Ok(resolved);
        }
        let (public, internal): (Vec<SocketAddr>, Vec<SocketAddr>) =
            resolved.into_iter().partition(|a| !is_internal(a.ip()));
        if public.is_empty() {
            return Err(Refused::Internal {
                name: name.to_string(),
                addrs: internal.iter().map(SocketAddr::ip).collect(),
            });
        }
        Ok(public)
    }

    /// The addresses `host:port` may be connected to (see [`Egress::permitted`]).
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, Refused> {
        if let Some(ip) = ip_literal(host) {
            return self.permitted(host, true, vec![SocketAddr::new(ip, port)]);
        }
        let lookup = tokio::net::lookup_host((host, port));
        let resolved = match tokio::time::timeout(timeout, lookup).await {
            Err(_) => {
                return Err(Refused::LookupTimeout {
                    name: host.to_string(),
                });
            }
            Ok(Err(e)) => {
                return Err(Refused::Lookup {
                    name: host.to_string(),
                    why: e.to_string(),
                });
            }
            Ok(Ok(addrs)) => addrs.collect(),
        };
        self.permitted(host, false, resolved)
    }

    /// Sends `request` over a new HTTP/1.1 connection to the first of `addrs` that
    /// answers (TLS with `host` as the server name when `tls`), as
    /// `wasmtime_wasi_http::default_send_request` does for a name it resolves itself.
    /// The response body counts against `budget` as the guest reads it.
    pub(crate) async fn send(
        &self,
        addrs: &[SocketAddr],
        host: &str,
        tls: bool,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        budget: Arc<HttpBudget>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let between_bytes_timeout = options
            .and_then(|o| o.between_bytes_timeout)
            .unwrap_or(DEFAULT_TIMEOUT)
            // A zero interval would panic in tokio; 1 ns is as good as zero.
            .max(Duration::from_nanos(1));

        let tcp = connect(addrs, connect_timeout).await?;
        let stream: Box<dyn Stream> = if tls {
            let name = match ip_literal(host) {
                Some(ip) => rustls_pki_types::ServerName::IpAddress(ip.into()),
                None => rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
                    HttpError::DnsError {
                        rcode: Some("invalid dns name".to_string()),
                        info_code: None,
                    }
                })?,
            };
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            let handshake = connector.connect(name, tcp);
            match tokio::time::timeout(connect_timeout, handshake).await {
                Ok(stream) => Box::new(stream.map_err(HttpError::Tls)?),
                Err(_) => return Err(HttpError::ConnectionTimeout),
            }
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)),
        )
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;

        // Only the path goes on the request line (the authority is in `host`).
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;

        let send = async move {
            let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
                .await
                .map_err(|_| HttpError::ConnectionReadTimeout)??;
            let mut timeout = tokio::time::interval(between_bytes_timeout);
            timeout.reset();
            Ok::<_, HttpError>(response.map(|incoming| ResponseBody { incoming, timeout }))
        };
        // Drive the connection while waiting for the response head.
        let mut send = std::pin::pin!(send);
        let mut conn = Some(conn);
        let response = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = send.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            let Some(running) = conn.as_mut() else {
                return Poll::Pending;
            };
            let ended = ready!(Pin::new(running).poll(cx));
            conn = None;
            match ended {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(HttpError::from(e))),
            }
        })
        .await?;
        let io: IoFuture = Box::new(async move {
            match conn {
                Some(conn) => conn.await.map_err(|e| {
                    if e.is_timeout() {
                        HttpError::HttpResponseTimeout
                    } else {
                        HttpError::from(e)
                    }
                }),
                None => Ok(()),
            }
        });
        let response =
            response.map(|body| Metered::new(body, budget, Direction::Receive).boxed_unsync());
        Ok((response, io))
    }
}

/// The future that drives a connection after its response head arrived.
pub(crate) type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Connects to the first of `addrs` that accepts within `timeout`.
async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<tokio::net::TcpStream, HttpError> {
    let mut last = HttpError::ConnectionRefused;
    for addr in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = HttpError::Connect(e),
            Err(_) => last = HttpError::ConnectionTimeout,
        }
    }
    Err(last)
}

/// A response body that fails when no frame came for the between-bytes timeout.
struct ResponseBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.incoming.size_hint()
    }
}

/// Whether a connection to `ip` stays on this machine: loopback, the unspecified
/// address (which Linux connects to the local host), or an address of one of its
/// interfaces (one it can bind to).
fn on_this_machine(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Whether `ip` is not a public unicast address: this machine, a private, shared or
/// link-local network (cloud metadata services live at 169.254.169.254), multicast,
/// broadcast, documentation or reserved ranges. IPv6 addresses that carry an IPv4 one
/// (mapped, compatible, NAT64, 6to4) are judged by it.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network", 0.0.0.0 included
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || a >= 224 // multicast, reserved, broadcast
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return internal_v4(v4);
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
        || (s[0] == 0x2001 && s[1] < 0x200) // 2001::/23: Teredo, benchmarking, ORCHID
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // 3fff::/20, documentation
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // 100::/64, discard
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48, local NAT64
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d` (and so `::` and `::1`), NAT64 `64:ff9b::a.b.c.d`,
/// 6to4 `2002:aabb:ccdd::`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo]
        | [0, 0, 0, 0, 0, 0, hi, lo]
        | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a test address")
    }

    #[test]
    fn only_public_unicast_addresses_are_external() {
        for internal in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            // IPv6 forms of internal IPv4 addresses.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
        ] {
            assert!(is_internal(ip(internal)), "{internal} counted as public");
        }
        for public in [
            "93.184.215.14",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:101:101::",
        ] {
            assert!(!is_internal(ip(public)), "{public} counted as internal");
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| a.parse().expect("a test socket address"))
            .collect()
    }

    #[test]
    fn a_name_reaches_only_public_addresses_and_nothing_reaches_the_host() {
        let egress = Egress::new(&addrs(&["127.0.0.1:3000", "0.0.0.0:3100"]));
        // A name: public addresses only, whatever else it resolves to.
        assert_eq!(
            egress
                .permitted(
                    "mixed.example",
                    false,
                    addrs(&["10.0.0.1:80", "1.1.1.1:80"])
                )
                .ok(),
            Some(addrs(&["1.1.1.1:80"]))
        );
        for internal in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
            "169.254.169.254:80",
        ] {
            assert!(
                matches!(
                    egress.permitted("localhost", false, addrs(&[internal])),
                    Err(Refused::Internal { .. })
                ),
                "{internal}"
            );
        }
        // An IP literal: the address it names, internal or not...
        assert!(
            egress
                .permitted("127.0.0.1", true, addrs(&["127.0.0.1:8080"]))
                .is_ok()
        );
        // ...but never one of the host's own listeners, in any spelling.
        for own in [
            "127.0.0.1:3000",
            "127.0.0.1:3100",
            "127.0.0.2:3100",
            "[::1]:3100",
            "[::ffff:127.0.0.1]:3000",
            "0.0.0.0:3000",
            "[::]:3100",
        ] {
            for literal in [true, false] {
                assert!(
                    matches!(
                        egress.permitted("x", literal, addrs(&[own])),
                        Err(Refused::Own { .. })
                    ),
                    "{own}"
                );
            }
        }
        // The same port elsewhere is not the host.
        assert!(
            egress
                .permitted("x", true, addrs(&["93.184.215.14:3000"]))
                .is_ok()
        );
    }

    #[test]
    fn ip_literals_as_urls_spell_them() {
        assert_eq!(ip_literal("127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(ip_literal("[::1]"), Some(ip("::1")));
        assert_eq!(ip_literal("localhost"), None);
        assert_eq!(ip_literal("127.1"), None);
    }
}
