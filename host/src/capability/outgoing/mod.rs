//! Outgoing HTTP (`wasi:http/outgoing-handler`): calls to `http://<service>.internal/...`
//! are served in-process through a [`ServiceCaller`] (the dispatcher, with its circuit
//! breakers), carrying the caller's identity; calls to outside hosts go out only to the
//! hosts the manifest allows, and only to the addresses [`egress`] lets them resolve
//! to; everything else is refused with `HTTP-request-denied` (not granted) or
//! `destination-IP-prohibited` (granted, but an internal address or the host itself),
//! which the guest sees as an error, not a trap. Everything an invocation sends and
//! receives counts against its [`budget`].

pub(crate) mod budget;
pub(crate) mod egress;

use super::RequestContext;
use crate::auth::Identity;
use crate::config::ServiceSpec;
use crate::headers::{
    CALLER_HEADER, CLAIMS_HEADER, HOPS_HEADER, HOST_HEADER_PREFIX, REQUEST_ID_HEADER,
    SUBJECT_HEADER, TRACEPARENT_HEADER,
};
use budget::{Direction, HttpBudget, Metered, header_bytes};
use bytes::Bytes;
pub(crate) use egress::Egress;
use http_body_util::{BodyExt, Full};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The suffix that names a service instead of a host.
pub(crate) const INTERNAL_SUFFIX: &str = ".internal";
/// Deepest chain of service-to-service calls.
pub(crate) const MAX_HOPS: u32 = 8;
/// Largest request body a service may send to another.
pub(crate) const MAX_CALL_BODY: usize = 16 * 1024 * 1024;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves a service-to-service call in-process. The answer is always an HTTP response:
/// failures of the callee come back as problem responses (502, 503, 504...), as at the
/// edge.
pub(crate) trait ServiceCaller: Send + Sync {
    fn call(
        &self,
        target: String,
        request: http::Request<Bytes>,
    ) -> BoxFuture<http::Response<Bytes>>;
}

/// Strips every `x-microhost-*` header: only the host sets them.
pub(crate) fn strip_identity_headers(headers: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(HOST_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Sets the identity headers for `identity`, as UTF-8: a subject or claim in any script
/// goes through whole (only the host reads and writes these headers).
pub(crate) fn set_identity_headers(headers: &mut http::HeaderMap, identity: &Identity) {
    if let Ok(v) = http::HeaderValue::from_bytes(identity.subject.as_bytes()) {
        headers.insert(SUBJECT_HEADER, v);
    }
    // JSON escapes every control character, so the claims always make a header value.
    let claims = serde_json::Value::Object(identity.claims.clone()).to_string();
    if let Ok(v) = http::HeaderValue::from_bytes(claims.as_bytes()) {
        headers.insert(CLAIMS_HEADER, v);
    }
}

/// What a service may call (its manifest's `calls` and `allowed_hosts`), built once per
/// service.
#[derive(Clone)]
pub(crate) struct HttpGrant {
    /// The calling service.
    service: String,
    /// Services it may call (manifest `calls`).
    services: Arc<BTreeSet<String>>,
    /// Outside hosts it may call (manifest `allowed_hosts`).
    hosts: Arc<BTreeSet<String>>,
    /// Bytes one invocation may send and receive (`limits.http_send_kib`,
    /// `limits.http_receive_kib`).
    max_sent: usize,
    max_received: usize,
}

impl HttpGrant {
    pub(crate) fn new(spec: &ServiceSpec) -> HttpGrant {
        HttpGrant {
            service: spec.name.to_string(),
            services: Arc::new(spec.calls.iter().map(ToString::to_string).collect()),
            hosts: Arc::new(
                spec.allowed_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            ),
            max_sent: spec.limits.http_send_bytes(),
            max_received: spec.limits.http_receive_bytes(),
        }
    }

    /// What one invocation serving `request` may call, and as whom; `egress` says where
    /// its outside calls may connect.
    pub(crate) fn outgoing(&self, request: &RequestContext, egress: &Arc<Egress>) -> Outgoing {
        Outgoing {
            budget: Arc::new(HttpBudget::new(
                &self.service,
                self.max_sent,
                self.max_received,
            )),
            egress: egress.clone(),
            grant: self.clone(),
            caller: request.caller.clone(),
            identity: request.identity.clone(),
            hops: request.hops,
            traceparent: request.traceparent.clone(),
            request_id: request.request_id.clone(),
            tracer: request.tracer.clone(),
        }
    }
}

/// What one invocation may call, and as whom.
pub(crate) struct Outgoing {
    grant: HttpGrant,
    /// Where outside calls may connect (never the host's own listeners).
    egress: Arc<Egress>,
    /// What the invocation has sent and received so far, and may.
    budget: Arc<HttpBudget>,
    /// Who serves its calls to services (the dispatcher).
    caller: Option<Arc<dyn ServiceCaller>>,
    /// The verified identity of the request being served, passed on.
    identity: Option<Identity>,
    /// Hops of the request being served.
    hops: u32,
    /// Trace context and request id of the request being served, passed on unless the
    /// guest sets its own.
    traceparent: Option<String>,
    request_id: Option<String>,
    /// Opens a client span for every call.
    tracer: crate::telemetry::Tracer,
}

impl Outgoing {
    fn propagate(&self, headers: &mut http::HeaderMap) {
        for (name, value) in [
            (TRACEPARENT_HEADER, &self.traceparent),
            (REQUEST_ID_HEADER, &self.request_id),
        ] {
            if let Some(value) = value
                && !headers.contains_key(name)
                && let Ok(value) = http::HeaderValue::from_str(value)
            {
                headers.insert(http::HeaderName::from_static(name), value);
            }
        }
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

fn done() -> Box<dyn Future<Output = Result<(), HttpError>> + Send> {
    Box::new(async { Ok(()) })
}

/// The declared `content-length` of a message, if any.
fn content_length(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl Outgoing {
    /// A call to another service, served in-process by the dispatcher. The request body
    /// is read whole (within the budget and [`MAX_CALL_BODY`]), as is the answer.
    fn call_service(
        &self,
        target: String,
        request: http::Request<WasiBody>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let allowed = self.grant.services.contains(&target);
        let (Some(caller), true) = (self.caller.clone(), allowed) else {
            tracing::warn!(service = %self.grant.service, target, "call to a service not in `calls` refused");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        if self.hops >= MAX_HOPS {
            return Box::new(async { Err(HttpError::LoopDetected) });
        }
        let service = self.grant.service.clone();
        let identity = self.identity.clone();
        let hops = self.hops + 1;
        let budget = self.budget.clone();
        Box::new(async move {
            let (mut parts, body) = request.into_parts();
            let remaining = budget.remaining(Direction::Send);
            let body = match crate::body::collect(body, remaining.min(MAX_CALL_BODY)).await {
                Ok(body) => body,
                Err(crate::body::BodyError::TooLarge(_)) if remaining < MAX_CALL_BODY => {
                    return Err(budget.exhaust(Direction::Send));
                }
                Err(_) => return Err(HttpError::HttpRequestBodySize(None)),
            };
            budget.spend(Direction::Send, header_bytes(&parts.headers) + body.len())?;
            strip_identity_headers(&mut parts.headers);
            if let Ok(v) = http::HeaderValue::from_str(&service) {
                parts.headers.insert(CALLER_HEADER, v);
            }
            parts
                .headers
                .insert(HOPS_HEADER, http::HeaderValue::from(hops));
            if let Some(identity) = &identity {
                set_identity_headers(&mut parts.headers, identity);
            }
            let response = caller
                .call(target, http::Request::from_parts(parts, body))
                .await;
            budget.spend(
                Direction::Receive,
                header_bytes(response.headers()) + response.body().len(),
            )?;
            let response = response.map(|b| {
                Full::new(b)
                    .map_err(|never: std::convert::Infallible| match never {})
                    .boxed_unsync()
            });
            Ok((response, done()))
        })
    }

    /// A call to an outside host: granted by `allowed_hosts`, connected only to the
    /// addresses [`Egress`] permits, its bodies metered against the budget as they pass.
    fn call_host(
        &self,
        host: String,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let tls = request.uri().scheme_str() == Some("https");
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(if tls { 443 } else { 80 });
        // A bare host name grants the web's ports only: no other service on that host
        // (the admin listener on loopback, a database) is reachable by name alone.
        let granted = (matches!(port, 80 | 443) && self.grant.hosts.contains(&host))
            || self.grant.hosts.contains(&format!("{host}:{port}"));
        if !granted {
            tracing::warn!(service = %self.grant.service, host, port, "outgoing request to a host and port not in `allowed_hosts` refused");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let service = self.grant.service.clone();
        let egress = self.egress.clone();
        let budget = self.budget.clone();
        Box::new(async move {
            budget.spend(Direction::Send, header_bytes(request.headers()))?;
            if content_length(request.headers())
                .is_some_and(|n| n > budget.remaining(Direction::Send))
            {
                return Err(budget.exhaust(Direction::Send));
            }
            let lookup_timeout = options
                .and_then(|o| o.connect_timeout)
                .unwrap_or(egress::DEFAULT_TIMEOUT);
            let addrs = egress
                .resolve(&host, port, lookup_timeout)
                .await
                .map_err(|refused| {
                    tracing::warn!(service = %service, host, port, %refused, "outgoing request refused");
                    refused.code()
                })?;
            let request = request
                .map(|body| Metered::new(body, budget.clone(), Direction::Send).boxed_unsync());
            let (response, io) = egress
                .send(&addrs, &host, tls, request, options, budget.clone())
                .await
                // A request body cut off by the budget fails the exchange; say why.
                .map_err(|e| {
                    if budget.overrun(Direction::Send) {
                        budget.error(Direction::Send)
                    } else {
                        e
                    }
                })?;
            budget.spend(Direction::Receive, header_bytes(response.headers()))?;
            if content_length(response.headers())
                .is_some_and(|n| n > budget.remaining(Direction::Receive))
            {
                return Err(budget.exhaust(Direction::Receive));
            }
            Ok((response, io))
        })
    }
}

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        self.propagate(request.headers_mut());
        let host = request
            .uri()
            .host()
            .unwrap_or_default()
            .to_ascii_lowercase();
        // A client span under the trace context the request carries (the invocation's,
        // or one the guest set); the callee continues this span.
        let parent = request
            .headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut span = self.tracer.child(
            || format!("{} {host}", request.method()),
            opentelemetry::trace::SpanKind::Client,
            parent.as_deref(),
        );
        if span.is_recording() {
            span.set("http.request.method", request.method().to_string());
            span.set("server.address", host.clone());
            span.set("url.path", request.uri().path().to_string());
            if let Some(value) = span
                .traceparent()
                .and_then(|tp| http::HeaderValue::from_str(tp).ok())
            {
                request.headers_mut().insert(TRACEPARENT_HEADER, value);
            }
        }
        let sent = match host.strip_suffix(INTERNAL_SUFFIX) {
            Some(target) => self.call_service(target.to_string(), request),
            None => self.call_host(host, request, options),
        };
        Box::new(async move {
            let result = Box::into_pin(sent).await;
            match &result {
                Ok((response, _)) => span.status(response.status().as_u16()),
                Err(e) => span.fail(format!("{e:?}")),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_spec::spec;
    use super::*;
    use http_body_util::Empty;

    /// Stands in for the dispatcher: records the calls it is handed and answers 200.
    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<(String, http::HeaderMap)>>);

    impl ServiceCaller for Recorder {
        fn call(
            &self,
            target: String,
            request: http::Request<Bytes>,
        ) -> BoxFuture<http::Response<Bytes>> {
            self.0.lock().push((target, request.headers().clone()));
            Box::pin(async { http::Response::new(Bytes::from_static(b"ok")) })
        }
    }

    fn request(uri: &str, headers: &[(&'static str, &str)]) -> http::Request<WasiBody> {
        let body = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut request = http::Request::new(body);
        *request.uri_mut() = uri.parse().expect("a valid test uri");
        for (name, value) in headers {
            let value = http::HeaderValue::from_str(value).expect("a valid test header");
            request.headers_mut().insert(*name, value);
        }
        request
    }

    async fn send(
        outgoing: &mut Outgoing,
        uri: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<u16, HttpError> {
        let sent = outgoing.send_request(request(uri, headers), None, done());
        let (response, _io) = Box::into_pin(sent).await?;
        Ok(response.status().as_u16())
    }

    fn outgoing(recorder: &Arc<Recorder>, hops: u32) -> Outgoing {
        let grant = HttpGrant::new(&spec(
            r#"calls = ["user"]
allowed_hosts = ["api.example.com"]"#,
        ));
        grant.outgoing(
            &RequestContext {
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                request_id: Some("req-1".into()),
                identity: Some(Identity {
                    subject: "ada".into(),
                    claims: serde_json::Map::new(),
                }),
                hops,
                caller: Some(recorder.clone() as Arc<dyn ServiceCaller>),
                ..RequestContext::new("v1")
            },
            &Arc::new(Egress::default()),
        )
    }

    #[tokio::test]
    async fn calls_only_granted_services_as_the_caller_with_its_identity() -> anyhow::Result<()> {
        let recorder = Arc::new(Recorder::default());
        let mut calls = outgoing(&recorder, 2);
        let forged = [(SUBJECT_HEADER, "mallory"), (CALLER_HEADER, "admin")];
        assert_eq!(
            send(&mut calls, "http://user.internal/users/me", &forged).await?,
            200
        );
        assert!(matches!(
            send(&mut calls, "http://billing.internal/pay", &[]).await,
            Err(HttpError::HttpRequestDenied)
        ));
        for denied in [
            "http://evil.example.com/",
            // A granted name on another port: not the web server the grant names.
            "http://api.example.com:3100/admin/services",
            "https://API.example.com:8443/",
        ] {
            assert!(
                matches!(
                    send(&mut calls, denied, &[]).await,
                    Err(HttpError::HttpRequestDenied)
                ),
                "{denied}"
            );
        }
        let seen = recorder.0.lock();
        assert_eq!(
            seen.len(),
            1,
            "only the granted call reached the dispatcher"
        );
        let (target, headers) = &seen[0];
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(target, "user");
        assert_eq!(
            header(CALLER_HEADER),
            Some("orders"),
            "never the guest's own"
        );
        assert_eq!(header(SUBJECT_HEADER), Some("ada"), "never the guest's own");
        assert_eq!(header(HOPS_HEADER), Some("3"));
        assert_eq!(header(REQUEST_ID_HEADER), Some("req-1"));
        assert!(header(TRACEPARENT_HEADER).is_some_and(|t| t.starts_with("00-0af7")));
        Ok(())
    }

    #[test]
    fn identities_in_any_script_reach_the_callee_whole() -> anyhow::Result<()> {
        let mut claims = serde_json::Map::new();
        claims.insert("name".into(), "Zoë Ångström 山田".into());
        let identity = Identity {
            subject: "zoë".into(),
            claims,
        };
        let mut headers = http::HeaderMap::new();
        set_identity_headers(&mut headers, &identity);
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                .map(str::to_string)
        };
        assert_eq!(text(SUBJECT_HEADER).as_deref(), Some("zoë"));
        let seen: serde_json::Value =
            serde_json::from_str(&text(CLAIMS_HEADER).unwrap_or_default())?;
        assert_eq!(seen["name"], "Zoë Ångström 山田");
        Ok(())
    }

    #[tokio::test]
    async fn a_chain_of_calls_stops_at_max_hops() -> anyhow::Result<()> {
        let recorder = Arc::new(Recorder::default());
        let mut calls = outgoing(&recorder, MAX_HOPS);
        assert!(matches!(
            send(&mut calls, "http://user.internal/", &[]).await,
            Err(HttpError::LoopDetected)
        ));
        assert!(recorder.0.lock().is_empty());
        Ok(())
    }
}

#[cfg(test)]
mod refusals {
    use super::super::test_spec::spec;
    use super::*;

    /// Stands in for the dispatcher: answers every call with a body of `.0` bytes.
    struct Answers(usize);

    impl ServiceCaller for Answers {
        fn call(&self, _: String, _: http::Request<Bytes>) -> BoxFuture<http::Response<Bytes>> {
            let body = Bytes::from(vec![b'x'; self.0]);
            Box::pin(async move { http::Response::new(body) })
        }
    }

    fn outgoing(manifest: &str, answer: usize, egress: Egress) -> Outgoing {
        HttpGrant::new(&spec(manifest)).outgoing(
            &RequestContext {
                caller: Some(Arc::new(Answers(answer)) as Arc<dyn ServiceCaller>),
                ..RequestContext::new("v1")
            },
            &Arc::new(egress),
        )
    }

    async fn send(outgoing: &mut Outgoing, uri: &str, body: usize) -> Result<usize, HttpError> {
        let mut request = http::Request::new(
            Full::new(Bytes::from(vec![b'x'; body]))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *request.uri_mut() = uri.parse().expect("a valid test uri");
        let sent = outgoing.send_request(request, None, done());
        let (response, _io) = Box::into_pin(sent).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok(body.len())
    }

    #[tokio::test]
    async fn an_invocation_sends_and_receives_within_its_budget() -> anyhow::Result<()> {
        let manifest = "calls = [\"user\"]\nlimits = { http_send_kib = 4, http_receive_kib = 4 }";
        let mut calls = outgoing(manifest, 1024, Egress::default());
        // Three calls of 1 KiB each way fit; a body of 2 KiB more does not.
        for _ in 0..3 {
            assert_eq!(send(&mut calls, "http://user.internal/", 1024).await?, 1024);
        }
        assert!(matches!(
            send(&mut calls, "http://user.internal/", 2048).await,
            Err(HttpError::HttpRequestBodySize(Some(4096)))
        ));
        // The answers count too: one of 8 KiB is over the receive budget at once.
        let mut calls = outgoing(manifest, 8 * 1024, Egress::default());
        assert!(matches!(
            send(&mut calls, "http://user.internal/", 0).await,
            Err(HttpError::HttpResponseBodySize(Some(4096)))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_granted_name_never_leads_inside_nor_to_the_host() -> anyhow::Result<()> {
        let admin: std::net::SocketAddr = "127.0.0.1:3100".parse()?;
        let manifest = r#"allowed_hosts = ["localhost:8080", "localhost:3100", "127.0.0.1:3100"]"#;
        let mut calls = outgoing(manifest, 0, Egress::new(&[admin]));
        for uri in [
            // `localhost` resolves to loopback: not reached by name.
            "http://localhost:8080/",
            "http://localhost:3100/admin/services",
            // The admin listener: not even by its IP literal.
            "http://127.0.0.1:3100/admin/services",
        ] {
            assert!(
                matches!(
                    send(&mut calls, uri, 0).await,
                    Err(HttpError::DestinationIpProhibited)
                ),
                "{uri}"
            );
        }
        Ok(())
    }
}
