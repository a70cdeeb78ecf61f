//! Test guest: publishes events. `POST /{prefix}/pub/{topic}?key=K&then=X` writes the
//! key-value entry `published-{body}` and publishes the body to `topic`; then answers
//! 201 `{"id"}`, or with `then=500` a 500, with `then=trap` a trap. A publish error is
//! answered 422 with the guest-visible message. `GET /{prefix}/kv/{key}` reads an entry.
use microhost_guest::{Request, Response, Service, events, kv};

struct Publish;

impl Service for Publish {
    fn handle(req: Request) -> Response {
        let bucket = match kv::open() {
            Ok(b) => b,
            Err(e) => return Response::internal_error(&e),
        };
        let segments = req.segments();
        match (req.method.as_str(), segments.as_slice()) {
            ("POST", [.., "pub", topic]) => {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                if let Err(e) = bucket.set(&format!("published-{body}"), b"1") {
                    return Response::internal_error(&kv::describe(e));
                }
                let published = match req.query_param("key") {
                    Some(key) => {
                        events::publish_with(topic, body.as_bytes(), Some(key), Some("text/plain"))
                    }
                    None => events::publish(topic, body.as_bytes()),
                };
                let id = match published {
                    Ok(id) => id,
                    Err(e) => return Response::problem(422, "Unprocessable Content", &e),
                };
                match req.query_param("then") {
                    Some("500") => Response::internal_error("failing after publishing, on purpose"),
                    Some("trap") => panic!("trapping after publishing, on purpose"),
                    _ => Response::json(201, &serde_json::json!({ "id": id })),
                }
            }
            ("GET", [.., "kv", key]) => match bucket.get(key) {
                Ok(Some(v)) => Response::new(200).with_body(v),
                Ok(None) => Response::not_found(&format!("no key {key:?}")),
                Err(e) => Response::internal_error(&kv::describe(e)),
            },
            _ => Response::not_found("expected POST .../pub/{topic} or GET .../kv/{key}"),
        }
    }
}

microhost_guest::service!(Publish);
