//! Test guest: answers with what it received (method, path, query, headers, body) and
//! the `greeting` config value, as JSON. `?status=N` sets the status; `?max_age=S`
//! sends `Cache-Control: max-age=S`, `?no_store=1` sends `Cache-Control: no-store`.
//! `?call=S` first calls `GET http://S.internal/from-echo` with `x-echo-hop: 1` and adds
//! its answer as `called: {status, content_type, body}` (`&call_body=N`: a `POST` of N
//! bytes instead). `instance_requests` counts the
//! requests this instance has served (1 unless the host reuses instances).
use microhost_guest::client::Request as Call;
use microhost_guest::{Error, Request, Response, Service};

struct Echo;

/// Requests served by this instance: memory a reused instance keeps.
static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Service for Echo {
    fn handle(req: Request) -> Result<Response, Error> {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned().into()))
            .collect();
        let status = req
            .query_param("status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let cache_control = match (req.query_param("max_age"), req.query_param("no_store")) {
            (_, Some(_)) => Some("no-store".to_string()),
            (Some(secs), None) => Some(format!("max-age={secs}")),
            (None, None) => None,
        };
        let called = req.query_param("call").map(|service| {
            let url = format!("http://{service}.internal/from-echo");
            // `call_body=N`: a POST of N bytes instead of the GET.
            let call = match req.query_param("call_body").and_then(|n| n.parse().ok()) {
                Some(n) => Call::post(url).body(vec![b'x'; n]),
                None => Call::get(url),
            }
            .header("x-echo-hop", "1");
            match call.send() {
                Ok(reply) => serde_json::json!({
                    "status": reply.status,
                    "content_type": reply.header("content-type"),
                    "body": reply.json::<serde_json::Value>().unwrap_or_default(),
                }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }
        });
        let response = Response::json(
            status,
            &serde_json::json!({
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "headers": headers,
                "body": String::from_utf8_lossy(&req.body),
                "greeting": microhost_guest::config("greeting"),
                "called": called,
                "instance_requests": SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            }),
        );
        Ok(match cache_control {
            Some(cc) => response.with_header("cache-control", cc),
            None => response,
        })
    }
}

microhost_guest::service!(Echo);
