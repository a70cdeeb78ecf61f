//! Entry points for the `cargo fuzz` targets in `fuzz/` (cargo feature `fuzzing`, off by
//! default): thin wrappers that hand fuzzer input to the real router, event decoder,
//! token verifier, admin API and gateway, so the targets reach them without the host's
//! rooms becoming public. Nothing here decides anything; each function calls the code
//! it names. (The manifest parser is public already: [`crate::config::Manifest`].)

use crate::auth::Auth;
use crate::bus::envelope::Envelope;
use crate::config::Manifest;
use crate::gateway::Gateway;
use crate::gateway::server::ServerLimits;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

// The registry's router is private to the registry, and pure (it imports nothing), so
// it is compiled here a second time from the same file rather than widening the
// registry's public face for the fuzzer.
#[path = "registry/router.rs"]
#[expect(
    clippy::duplicate_mod,
    reason = "the registry's own router.rs, compiled again so that it stays private there"
)]
mod router;

/// The service the registry's router picks for `path`, among `routes`
/// (`(prefix, service)` pairs, as the catalog builds them from the manifest).
pub fn route(routes: Vec<(String, String)>, path: &str) -> Option<String> {
    router::Router::new(routes).route(path).map(str::to_string)
}

/// An event as a topic's log stores it ([`Envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event(Envelope);

impl Event {
    /// Decodes a stored event, as delivery and the admin API read the log.
    pub fn decode(bytes: &[u8]) -> Result<Event, String> {
        Envelope::decode(bytes).map(Event)
    }

    /// Encodes it, as a commit writes it to the log.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }
}

/// The bearer token of an `Authorization` header value, as the gateway and the admin
/// API take it (`None`: not a bearer credential, or not a valid header value).
pub fn bearer(value: &[u8]) -> Option<String> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_bytes(value).ok()?,
    );
    crate::auth::bearer(&headers).map(str::to_string)
}

/// A verified token: its subject and every claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub subject: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The host's token issuer and verifier, with the keys of a manifest's `[auth]`.
pub struct Tokens(Auth);

impl Tokens {
    /// Signs with the HS256 `secret` (the host key) and verifies with it and with the
    /// keys `manifest` names (`[[auth.key]]`, `jwks`), loaded as `start` loads them.
    pub fn new(manifest: &Manifest, secret: &[u8]) -> anyhow::Result<Tokens> {
        Auth::for_manifest(secret, manifest).map(Tokens)
    }

    /// Verifies `token` as a protected route does.
    pub fn verify(&self, token: &str) -> Result<Verified, String> {
        self.0.verify(token).map(|identity| Verified {
            subject: identity.subject,
            claims: identity.claims,
        })
    }

    /// Issues a token as the auth capability does for a granted service.
    pub fn issue(
        &self,
        subject: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
        ttl_secs: u32,
    ) -> Result<String, String> {
        self.0.issue(subject, claims, u64::from(ttl_secs))
    }
}

/// What one connection to the gateway exchanged.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Every byte the server wrote, until it closed the connection.
    pub output: Vec<u8>,
    /// The method of each request that reached the gateway's handler, in order (HTTP/1
    /// answers them in this order; any answer after them is hyper's own, for a request
    /// it refused).
    pub served: Vec<http::Method>,
}

/// A host as `start` wires it (sled state, wasmtime, registry with the manifest's
/// services, dispatcher, gateway, admin API), minus the listeners, the supervisor and
/// the delivery loops: connections come from [`Host::edge`] and requests from
/// [`Host::admin`].
pub struct Host {
    runtime: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
    admin: axum::Router,
    limits: ServerLimits,
}

/// The peer address every fuzzed connection comes from.
const PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

impl Host {
    /// Loads `manifest` with its state in `data_dir` (compiled components cached in
    /// `cache_dir`), tokens signed with `jwt_secret`, the admin API behind
    /// `admin_token`.
    pub fn start(
        manifest: &Manifest,
        data_dir: &Path,
        cache_dir: &Path,
        jwt_secret: &str,
        admin_token: &str,
    ) -> anyhow::Result<Host> {
        let mut config = crate::HostConfig::new(manifest.clone());
        config.data_dir = data_dir.to_path_buf();
        config.cache_dir = Some(cache_dir.to_path_buf());
        config.jwt_secret = Some(jwt_secret.to_string());
        config.max_instances = 8;
        // One thread: every input runs to its end before the next one starts.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let backend = crate::store::SledStorage::open(data_dir)?;
        // No listeners: no address of the host's own to keep outgoing calls from.
        let wired = runtime.block_on(crate::wire(
            &config,
            backend,
            &[],
            admin_token,
            Default::default(),
        ))?;
        Ok(Host {
            runtime,
            gateway: wired.gateway,
            admin: wired.admin,
            limits: config.limits,
        })
    }

    /// Serves one client connection that sends `input` and then closes its side, with
    /// the gateway server's HTTP settings, and returns what the server wrote back.
    pub fn edge(&self, input: &[u8]) -> Exchange {
        let served = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let service = {
            let (gateway, served) = (self.gateway.clone(), served.clone());
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                served.lock().push(req.method().clone());
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(req, PEER).await) }
            })
        };
        let builder = server_builder(&self.limits);
        let output = self.runtime.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let connection = builder.serve_connection(TokioIo::new(server), service);
            let send = async {
                // The server may close before it has read everything: not an error.
                let _ = to_server.write_all(input).await;
                let _ = to_server.shutdown().await;
            };
            let receive = async {
                let mut output = Vec::new();
                let _ = from_server.read_to_end(&mut output).await;
                output
            };
            let serve = async {
                // A refused request ends the connection with an error: that is the
                // answer, not a failure of the harness.
                let _ = connection.await;
            };
            let ((), (), output) = tokio::join!(send, serve, receive);
            output
        });
        let served = std::mem::take(&mut *served.lock());
        Exchange { output, served }
    }

    /// Sends `request` through the admin API (token check included) and returns its
    /// answer with the body read.
    pub fn admin(&self, request: http::Request<Bytes>) -> http::Response<Bytes> {
        use tower::ServiceExt as _;
        self.runtime.block_on(async {
            let response = self
                .admin
                .clone()
                .oneshot(request.map(axum::body::Body::from))
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            http::Response::from_parts(parts, body)
        })
    }
}

/// The HTTP settings `gateway::server::serve` gives every connection, with one
/// difference: HTTP/1 half-close is allowed, so that the answer to the last request is
/// written after the client has sent everything and closed its side (the server would
/// otherwise drop it: each input is one whole connection, sent at once).
fn server_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = limits.http_builder();
    builder.http1().half_close(true);
    builder
}
