//! Test guest: an adversary that tries to exhaust the host, one behaviour per route (the
//! last path segment), each reporting what the host let it do.
//! - `POST .../publish?topic=T&count=N&kib=K`: publishes N events of K KiB to T until
//!   one is refused; a refusal is a 500 naming how many went out first (so nothing
//!   commits).
//! - `POST .../fill?count=N&from=I`: writes keys `key-{i}` for i in I..I+N (small values).
//! - `GET .../list?rounds=N`: lists the whole bucket, page by page, N times; answers
//!   `{"rounds", "keys"}` (keys seen in total).
//! - `POST .../write?count=N&kib=K`: tries N writes of K KiB each and goes on past
//!   refusals; a refusal is a 500 with `{"written", "refused", "error"}`.
//! - `GET .../fetch?url=U&times=N&send_kib=S`: calls U N times (a `POST` of S KiB when
//!   given, else a `GET`) and answers 200 with each call's `{"status", "bytes"}` or
//!   `{"error"}`.
//! - `POST .../mint?sub=S`: asks the host to sign a token for S (200 `{"token"}`, or a
//!   403 with the host's refusal).
//! - `GET .../hold?count=N`: creates N header maps and holds them all at once.
use microhost_guest::bindings::wasi::http::types::Fields;
use microhost_guest::client::Request as Call;
use microhost_guest::kv::Store;
use microhost_guest::{Error, Request, Response, Service, auth, events};

struct Hog;

fn number(req: &Request, name: &str, default: usize) -> usize {
    req.query_param(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Service for Hog {
    fn handle(req: Request) -> Result<Response, Error> {
        let segments = req.segments();
        match (req.method.as_str(), segments.last().copied()) {
            ("POST", Some("publish")) => {
                let topic = req.query_param("topic").unwrap_or("hog");
                let payload = vec![b'e'; number(&req, "kib", 1) * 1024];
                for i in 0..number(&req, "count", 1) {
                    if let Err(e) = events::publish(topic, &payload) {
                        return Err(Error::other(format!("published {i} events, then: {e}")));
                    }
                }
                Ok(Response::new(204))
            }
            ("POST", Some("fill")) => {
                let store = Store::open()?;
                let from = number(&req, "from", 0);
                for i in from..from + number(&req, "count", 1) {
                    store.set(&format!("key-{i:08}"), b"v")?;
                }
                Ok(Response::new(204))
            }
            ("GET", Some("list")) => {
                let store = Store::open()?;
                let rounds = number(&req, "rounds", 1);
                let mut keys = 0;
                for _ in 0..rounds {
                    let mut cursor = None;
                    loop {
                        let page = store.list_keys(cursor)?;
                        keys += page.keys.len();
                        match page.cursor {
                            Some(next) => cursor = Some(next),
                            None => break,
                        }
                    }
                }
                let body = serde_json::json!({ "rounds": rounds, "keys": keys });
                Ok(Response::json(200, &body))
            }
            ("POST", Some("write")) => {
                let store = Store::open()?;
                let value = vec![b'w'; number(&req, "kib", 1) * 1024];
                let (mut written, mut refused, mut error) = (0, 0, None);
                for i in 0..number(&req, "count", 1) {
                    match store.set(&format!("bomb-{i}"), &value) {
                        Ok(()) => written += 1,
                        Err(e) => {
                            refused += 1;
                            error.get_or_insert(e.to_string());
                        }
                    }
                }
                let body = serde_json::json!({
                    "written": written, "refused": refused, "error": error,
                });
                let status = if refused > 0 { 500 } else { 200 };
                Ok(Response::json(status, &body))
            }
            ("GET", Some("fetch")) => {
                let url = req
                    .query_param("url")
                    .ok_or_else(|| Error::bad_request("fetch needs ?url="))?;
                let send = req
                    .query_param("send_kib")
                    .and_then(|v| v.parse::<usize>().ok());
                let calls: Vec<serde_json::Value> = (0..number(&req, "times", 1))
                    .map(|_| {
                        let call = match send {
                            Some(kib) => Call::post(url).body(vec![b's'; kib * 1024]),
                            None => Call::get(url),
                        };
                        match call.send() {
                            Ok(reply) => serde_json::json!({
                                "status": reply.status, "bytes": reply.body.len(),
                            }),
                            Err(e) => serde_json::json!({ "error": e.to_string() }),
                        }
                    })
                    .collect();
                Ok(Response::json(200, &serde_json::json!({ "calls": calls })))
            }
            ("POST", Some("mint")) => {
                let subject = req.query_param("sub").unwrap_or("admin");
                match auth::issue_token(subject, &serde_json::json!({}), 3600) {
                    Ok(token) => Ok(Response::json(200, &serde_json::json!({ "token": token }))),
                    Err(e) => Err(Error::forbidden(&e.to_string())),
                }
            }
            ("GET", Some("hold")) => {
                let held: Vec<Fields> = (0..number(&req, "count", 1))
                    .map(|_| Fields::new())
                    .collect();
                Ok(Response::text(200, format!("held {}", held.len())))
            }
            _ => Err(Error::not_found(
                "expected .../publish, fill, list, write, fetch, mint or hold",
            )),
        }
    }
}

microhost_guest::service!(Hog);
