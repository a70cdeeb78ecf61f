//! Test guest: publishes events. `POST /{prefix}/pub/{topic}?key=K&then=X` writes the
//! key-value entry `published-{body}` and publishes the body to `topic`; then answers
//! 201 `{"id"}`, or with `then=500` a 500, with `then=trap` a trap. A publish error is
//! answered 422 with the guest-visible message. `GET /{prefix}/kv/{key}` reads an entry.
use microhost_guest::kv::Store;
use microhost_guest::{Error, Request, Response, Service, events};

struct Publish;

impl Service for Publish {
    fn handle(req: Request) -> Result<Response, Error> {
        let store = Store::open()?;
        let segments = req.segments();
        match (req.method.as_str(), segments.as_slice()) {
            ("POST", [.., "pub", topic]) => {
                let body = String::from_utf8_lossy(&req.body).into_owned();
                store.set(&format!("published-{body}"), b"1")?;
                let published = match req.query_param("key") {
                    Some(key) => {
                        events::publish_with(topic, body.as_bytes(), Some(key), Some("text/plain"))
                    }
                    None => events::publish(topic, body.as_bytes()),
                };
                let id = published.map_err(|e| Error::unprocessable(&e.to_string()))?;
                match req.query_param("then") {
                    Some("500") => Err(Error::other("failing after publishing, on purpose")),
                    Some("trap") => panic!("trapping after publishing, on purpose"),
                    _ => Ok(Response::json(201, &serde_json::json!({ "id": id }))),
                }
            }
            ("GET", [.., "kv", key]) => match store.get(key)? {
                Some(v) => Ok(Response::new(200).with_body(v)),
                None => Err(Error::not_found(&format!("no key {key:?}"))),
            },
            _ => Err(Error::not_found(
                "expected POST .../pub/{topic} or GET .../kv/{key}",
            )),
        }
    }
}

microhost_guest::service!(Publish);
