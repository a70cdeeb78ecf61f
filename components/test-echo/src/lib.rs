//! Test guest: answers with what it received (method, path, query, headers, body) and
//! the `greeting` config value, as JSON.
use microhost_guest::{Request, Response, Service};

struct Echo;

impl Service for Echo {
    fn handle(req: Request) -> Response {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned().into()))
            .collect();
        Response::json(
            200,
            &serde_json::json!({
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "headers": headers,
                "body": String::from_utf8_lossy(&req.body),
                "greeting": microhost_guest::config("greeting"),
            }),
        )
    }
}

microhost_guest::service!(Echo);
