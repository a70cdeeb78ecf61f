//! Outgoing HTTP (`wasi:http/outgoing-handler`): calls to `http://<service>.internal/...`
//! are served in-process through a [`ServiceCaller`] (the dispatcher, with its circuit
//! breakers), carrying the caller's identity; calls to outside hosts go out only to the
//! hosts the manifest allows; everything else is refused with `HTTP-request-denied`,
//! which the guest sees as an error, not a trap.

use super::RequestContext;
use crate::auth::Identity;
use crate::config::ServiceSpec;
use crate::headers::{
    CALLER_HEADER, CLAIMS_HEADER, HOPS_HEADER, HOST_HEADER_PREFIX, REQUEST_ID_HEADER,
    SUBJECT_HEADER, TRACEPARENT_HEADER,
};
use bytes::Bytes;
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
        }
    }

    /// What one invocation serving `request` may call, and as whom.
    pub(crate) fn outgoing(&self, request: &RequestContext) -> Outgoing {
        Outgoing {
            grant: self.clone(),
            caller: request.caller.clone(),
            identity: request.identity.clone(),
            hops: request.hops,
            traceparent: request.traceparent.clone(),
            request_id: request.request_id.clone(),
        }
    }
}

/// What one invocation may call, and as whom.
pub(crate) struct Outgoing {
    grant: HttpGrant,
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
        if let Some(target) = host.strip_suffix(INTERNAL_SUFFIX) {
            let target = target.to_string();
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
            return Box::new(async move {
                let (mut parts, body) = request.into_parts();
                let body = crate::body::collect(body, MAX_CALL_BODY)
                    .await
                    .map_err(|_| HttpError::HttpRequestBodySize(None))?;
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
                let response = response.map(|b| {
                    Full::new(b)
                        .map_err(|never: std::convert::Infallible| match never {})
                        .boxed_unsync()
                });
                Ok((response, done()))
            });
        }
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(match request.uri().scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
        // A bare host name grants the web's ports only: no other service on that host
        // (the admin listener on loopback, a database) is reachable by name alone.
        let granted = (matches!(port, 80 | 443) && self.grant.hosts.contains(&host))
            || self.grant.hosts.contains(&format!("{host}:{port}"));
        if !granted {
            tracing::warn!(service = %self.grant.service, host, port, "outgoing request to a host and port not in `allowed_hosts` refused");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
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
        grant.outgoing(&RequestContext {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            request_id: Some("req-1".into()),
            identity: Some(Identity {
                subject: "ada".into(),
                claims: serde_json::Map::new(),
            }),
            hops,
            caller: Some(recorder.clone() as Arc<dyn ServiceCaller>),
            ..RequestContext::new("v1")
        })
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
