//! Test guest: a subscriber that records what it receives, with failures on demand.
//!
//! For an event whose data is the text `d`, it increments `count/{d}`, appends `d` to
//! `order/{topic}` (unless config `record_order` is `false`), and stores the envelope under `event/{d}` and the publish-to-handle
//! latency in microseconds under `latency/{d}`. Then:
//! - `d` starts with `fail2`: the first two attempts fail (after writing, so a commit
//!   of a failed attempt would show as a count above 1);
//! - `d` starts with `poison`: every attempt fails; `d` starts with `trap`: it traps;
//! - `d` starts with `fragile`: attempts fail while the service is "broken".
//!
//! HTTP: `GET /{prefix}/count/{d}`, `/order/{topic}`, `/event/{d}`, `/latency/{d}`,
//! `/counts` (every event with its count);
//! `POST /{prefix}/break` and `POST /{prefix}/fix` toggle "broken".
use microhost_guest::kv::Store;
use microhost_guest::{Error, Event, Request, Response, Service};

struct Subscriber;

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch of an RFC 3339 UTC time like
/// `2026-11-26T00:34:58.160Z` (what the host stamps on events).
fn parse_micros(time: &str) -> Option<u128> {
    let (date, rest) = time.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let rest = rest.trim_end_matches('Z');
    let mut t = rest.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let whole = days * 86_400 + h * 3600 + min * 60;
    Some((whole as u128) * 1_000_000 + (secs * 1_000_000.0) as u128)
}

impl Service for Subscriber {
    fn handle(req: Request) -> Result<Response, Error> {
        let store = Store::open()?;
        let segments = req.segments();
        match (req.method.as_str(), segments.last().copied()) {
            ("POST", Some("break")) => {
                store.set("broken", b"1")?;
                return Ok(Response::new(204));
            }
            ("GET", Some("counts")) => {
                // Every event seen, with how often its effects were applied.
                let mut counts = serde_json::Map::new();
                for key in store.keys_with_prefix("count/")? {
                    let n: u64 = store.get_json(&key)?.unwrap_or(0);
                    counts.insert(key["count/".len()..].to_string(), n.into());
                }
                return Ok(Response::json(200, &counts));
            }
            ("POST", Some("fix")) => {
                store.delete("broken")?;
                return Ok(Response::new(204));
            }
            _ => {}
        }
        let (kind, name) = match segments.as_slice() {
            [.., kind, name] => (*kind, *name),
            _ => {
                return Err(Error::not_found(
                    "expected .../{count|order|event|latency}/{name}",
                ));
            }
        };
        match store.get(&format!("{kind}/{name}"))? {
            Some(v) => Ok(Response::new(200).with_body(v)),
            None if kind == "count" => Ok(Response::text(200, "0")),
            None => Err(Error::not_found(&format!("nothing under {kind}/{name}"))),
        }
    }

    fn on_event(event: Event) -> Result<(), Error> {
        let store = Store::open()?;
        let d = String::from_utf8_lossy(&event.data).into_owned();
        let count: u64 = store.get_json(&format!("count/{d}"))?.unwrap_or(0);
        store.set_json(&format!("count/{d}"), &(count + 1))?;
        // The benchmark turns this off: rewriting a growing list would be what it measures.
        if microhost_guest::config("record_order").as_deref() != Some("false") {
            let order_key = format!("order/{}", event.topic);
            let mut order: Vec<String> = store.get_json(&order_key)?.unwrap_or_default();
            order.push(d.clone());
            store.set_json(&order_key, &order)?;
        }
        let envelope = serde_json::json!({
            "id": event.id, "source": event.source, "topic": event.topic, "time": event.time,
            "offset": event.offset, "key": event.key, "content_type": event.content_type,
            "traceparent": event.traceparent, "attempt": event.attempt,
        });
        store.set_json(&format!("event/{d}"), &envelope)?;
        if let Some(published) = parse_micros(&event.time) {
            let latency = now_micros().saturating_sub(published) as u64;
            store.set_json(&format!("latency/{d}"), &latency)?;
        }
        if d.starts_with("fail2") && event.attempt <= 2 {
            return Err(format!("failing attempt {} on purpose", event.attempt).into());
        }
        if d.starts_with("poison") {
            return Err("poison event, failing on purpose".into());
        }
        if d.starts_with("fragile") && store.exists("broken")? {
            return Err("the service is broken".into());
        }
        if d.starts_with("trap") {
            panic!("trapping on event {d}");
        }
        Ok(())
    }
}

microhost_guest::service!(Subscriber);
