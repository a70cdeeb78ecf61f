//! Test guest: raw key-value access over HTTP.
//! `GET /kv/{key}`, `PUT /kv/{key}` (body = value), `DELETE /kv/{key}`, `GET /kv` (keys).
//! `POST /kv/{key}/incr` adds one to a counter (a read-modify-write).
//! `POST /kv/{key}/append` adds the body and a newline to the value and answers with
//! the number of lines (a read-modify-write that shows order and duplicates).
//! `POST /kv/{key}/fill?count=N&kib=K` writes N keys `{key}-{i}` of K KiB each (a write
//! bomb: the host's budget, not the guest, decides when it stops).
//! `PUT /kv/{key}?then=X` writes, then: `read` answers 200 with the value read back in
//! the same invocation, `500` answers 500, `trap` panics (to test the unit of work).
use microhost_guest::kv::Store;
use microhost_guest::{Error, Request, Response, Service};

struct Kv;

impl Service for Kv {
    fn handle(req: Request) -> Result<Response, Error> {
        let store = Store::open()?;
        let segments = req.segments();
        // A read-modify-write: the counter under `key` plus one.
        if let ([.., "kv", key, "incr"], "POST") = (segments.as_slice(), req.method.as_str()) {
            let current = store
                .get(key)?
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let next = (current + 1).to_string();
            store.set(key, next.as_bytes())?;
            return Ok(Response::text(200, next));
        }
        if let ([.., "kv", key, "append"], "POST") = (segments.as_slice(), req.method.as_str()) {
            let mut value = store.get(key)?.unwrap_or_default();
            value.extend_from_slice(&req.body);
            value.push(b'\n');
            store.set(key, &value)?;
            let lines = value.iter().filter(|b| **b == b'\n').count();
            return Ok(Response::text(200, lines.to_string()));
        }
        if let ([.., "kv", key, "fill"], "POST") = (segments.as_slice(), req.method.as_str()) {
            let number = |name: &str| req.query_param(name).and_then(|v| v.parse::<usize>().ok());
            let (count, kib) = (number("count").unwrap_or(1), number("kib").unwrap_or(1));
            let value = vec![b'x'; kib * 1024];
            for i in 0..count {
                store.set(&format!("{key}-{i}"), &value)?;
            }
            return Ok(Response::text(200, format!("wrote {count} keys")));
        }
        let key = match segments.as_slice() {
            [_, "kv"] | ["kv"] => None,
            [_, "kv", key] | ["kv", key] => Some(*key),
            _ => return Err(Error::not_found("expected /kv or /kv/{key}")),
        };
        match (req.method.as_str(), key) {
            ("GET", None) => {
                let keys = store.keys_with_prefix("")?;
                Ok(Response::json(200, &serde_json::json!({ "keys": keys })))
            }
            ("GET", Some(key)) => match store.get(key)? {
                Some(v) => Ok(Response::new(200).with_body(v)),
                None => Err(Error::not_found(&format!("no key {key:?}"))),
            },
            ("PUT", Some(key)) => {
                store.set(key, &req.body)?;
                match req.query_param("then") {
                    None => Ok(Response::new(204)),
                    Some("read") => {
                        let v = store.get(key)?;
                        Ok(Response::new(200).with_body(v.unwrap_or_default()))
                    }
                    Some("500") => Err(Error::other("failing after the write, on purpose")),
                    Some("trap") => panic!("trapping after the write, on purpose"),
                    Some(other) => Err(Error::bad_request(&format!("unknown then={other:?}"))),
                }
            }
            ("DELETE", Some(key)) => {
                store.delete(key)?;
                Ok(Response::new(204))
            }
            (method, _) => Err(Error::method_not_allowed(method, "GET, PUT, DELETE")),
        }
    }
}

microhost_guest::service!(Kv);
