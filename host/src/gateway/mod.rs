//! The edge: routes each request to a service by path prefix, verifies the bearer token
//! on protected routes (and strips identity headers a client might send), enforces the
//! request body limit, invokes the service's active version and answers with its
//! response (tagged `x-microhost-service: name@version`) or a problem body saying what
//! went wrong.

pub mod problem;
pub mod router;
pub mod server;

use crate::auth::Auth;
use crate::capability::outgoing::{set_identity_headers, strip_identity_headers};
use crate::dispatch::Dispatcher;
use crate::registry::{Registry, ServiceSlot};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use problem::{problem, problem_with};
use std::sync::Arc;
use std::time::Instant;

pub use crate::dispatch::SERVICE_HEADER;

/// The gateway: a router over the registry's services.
pub struct Gateway {
    registry: Arc<Registry>,
    dispatcher: Dispatcher,
    auth: Arc<Auth>,
}

impl Gateway {
    pub fn new(registry: Arc<Registry>, dispatcher: Dispatcher, auth: Arc<Auth>) -> Gateway {
        Gateway {
            registry,
            dispatcher,
            auth,
        }
    }

    /// Serves one request. Never fails: every outcome is an HTTP response.
    pub async fn handle(&self, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let Some(slot) = self.registry.route(&path) else {
            let response = problem(
                StatusCode::NOT_FOUND,
                format!("no service is routed at {path:?}"),
            );
            access_log(&method, &path, response.status(), "-", "-", started);
            return response;
        };
        let (response, version) = self.forward(&slot, req).await;
        access_log(
            &method,
            &path,
            response.status(),
            &slot.name,
            &version,
            started,
        );
        response
    }

    async fn forward(
        &self,
        slot: &Arc<ServiceSlot>,
        req: http::Request<Incoming>,
    ) -> (http::Response<Full<Bytes>>, String) {
        let max_body = slot.limits.max_body_kib.saturating_mul(1024);
        let (mut parts, body) = req.into_parts();
        // Identity headers come from the host only.
        strip_identity_headers(&mut parts.headers);
        match self.authenticate(slot, &parts) {
            Ok(Some(identity)) => set_identity_headers(&mut parts.headers, &identity),
            Ok(None) => {}
            Err(response) => return (*response, "-".to_string()),
        }
        let too_large = || {
            problem_with(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than the limit of {max_body} bytes for service {:?}",
                    slot.name
                ),
                service_fields(&slot.name, None),
            )
        };
        // Refuse a declared oversized body before reading any of it.
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return (too_large(), "-".to_string());
        }
        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return (too_large(), "-".to_string());
            }
            Err(e) => {
                let response = problem(
                    StatusCode::BAD_REQUEST,
                    format!("failed to read the request body: {e}"),
                );
                return (response, "-".to_string());
            }
        };
        // wasi:http needs an authority; HTTP/1.0 clients may send no Host.
        if parts.uri.authority().is_none() && !parts.headers.contains_key(header::HOST) {
            parts
                .headers
                .insert(header::HOST, HeaderValue::from_static("localhost"));
        }

        let outcome = self
            .dispatcher
            .call(slot, http::Request::from_parts(parts, body))
            .await;
        let version = outcome.version.clone();
        (outcome.into_response(&slot.name).map(Full::new), version)
    }

    /// Verifies the bearer token, if any. On a protected route (and not a `public`
    /// exception) one is required; a bearer token that is present must be valid
    /// anywhere. Other `Authorization` schemes pass through to unprotected routes, for
    /// services that authenticate their own way.
    fn authenticate(
        &self,
        slot: &ServiceSlot,
        parts: &http::request::Parts,
    ) -> Result<Option<crate::auth::Identity>, Box<http::Response<Full<Bytes>>>> {
        let required = slot.requires_token(parts.method.as_str(), parts.uri.path());
        let unauthorized = |detail: String| {
            let mut response = problem_with(
                StatusCode::UNAUTHORIZED,
                detail,
                service_fields(&slot.name, None),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Box::new(response)
        };
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = match bearer {
            Some(token) => token,
            None if required => {
                return Err(unauthorized(
                    "this route needs `Authorization: Bearer <token>`".to_string(),
                ));
            }
            None => return Ok(None),
        };
        self.auth
            .verify(token.trim())
            .map(Some)
            .map_err(unauthorized)
    }
}

fn service_fields(
    service: &str,
    version: Option<&str>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    extra.insert("service".into(), service.into());
    if let Some(version) = version {
        extra.insert("version".into(), version.into());
    }
    extra
}

fn access_log(
    method: &http::Method,
    path: &str,
    status: StatusCode,
    service: &str,
    version: &str,
    started: Instant,
) {
    tracing::info!(
        target: "microhost::access",
        %method,
        path,
        status = status.as_u16(),
        service,
        version,
        latency_us = started.elapsed().as_micros() as u64,
    );
}
