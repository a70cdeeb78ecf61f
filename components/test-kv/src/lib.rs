//! Test guest: raw key-value access over HTTP.
//! `GET /kv/{key}`, `PUT /kv/{key}` (body = value), `DELETE /kv/{key}`, `GET /kv` (keys).
//! `POST /kv/{key}/incr` adds one to a counter (a read-modify-write).
//! `PUT /kv/{key}?then=X` writes, then: `read` answers 200 with the value read back in
//! the same invocation, `500` answers 500, `trap` panics (to test the unit of work).
use microhost_guest::{Request, Response, Service, kv};

struct Kv;

impl Service for Kv {
    fn handle(req: Request) -> Response {
        let bucket = match kv::open() {
            Ok(b) => b,
            Err(e) => return Response::internal_error(&e),
        };
        let segments = req.segments();
        // A read-modify-write: the counter under `key` plus one.
        if let ([.., "kv", key, "incr"], "POST") = (segments.as_slice(), req.method.as_str()) {
            let current = match bucket.get(key) {
                Ok(v) => v
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
                Err(e) => return Response::internal_error(&kv::describe(e)),
            };
            let next = (current + 1).to_string();
            return match bucket.set(key, next.as_bytes()) {
                Ok(()) => Response::text(200, next),
                Err(e) => Response::internal_error(&kv::describe(e)),
            };
        }
        let key = match segments.as_slice() {
            [_, "kv"] | ["kv"] => None,
            [_, "kv", key] | ["kv", key] => Some(*key),
            _ => return Response::not_found("expected /kv or /kv/{key}"),
        };
        let result = match (req.method.as_str(), key) {
            ("GET", None) => kv::keys_with_prefix(&bucket, "")
                .map(|keys| Response::json(200, &serde_json::json!({ "keys": keys }))),
            ("GET", Some(key)) => bucket.get(key).map_err(kv::describe).map(|v| match v {
                Some(v) => Response::new(200).with_body(v),
                None => Response::not_found(&format!("no key {key:?}")),
            }),
            ("PUT", Some(key)) => bucket
                .set(key, &req.body)
                .map_err(kv::describe)
                .and_then(|()| match req.query_param("then") {
                    None => Ok(Response::new(204)),
                    Some("read") => bucket
                        .get(key)
                        .map_err(kv::describe)
                        .map(|v| Response::new(200).with_body(v.unwrap_or_default())),
                    Some("500") => Ok(Response::internal_error(
                        "failing after the write, on purpose",
                    )),
                    Some("trap") => panic!("trapping after the write, on purpose"),
                    Some(other) => Ok(Response::bad_request(&format!("unknown then={other:?}"))),
                }),
            ("DELETE", Some(key)) => bucket
                .delete(key)
                .map_err(kv::describe)
                .map(|()| Response::new(204)),
            (method, _) => Ok(Response::method_not_allowed(method, "GET, PUT, DELETE")),
        };
        result.unwrap_or_else(|e| Response::internal_error(&e))
    }
}

microhost_guest::service!(Kv);
