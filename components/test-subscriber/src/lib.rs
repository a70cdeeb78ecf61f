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
use microhost_guest::{Event, Request, Response, Service, kv};

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
    fn handle(req: Request) -> Response {
        let bucket = match kv::open() {
            Ok(b) => b,
            Err(e) => return Response::internal_error(&e),
        };
        let segments = req.segments();
        match (req.method.as_str(), segments.last().copied()) {
            ("POST", Some("break")) => {
                return match bucket.set("broken", b"1") {
                    Ok(()) => Response::new(204),
                    Err(e) => Response::internal_error(&kv::describe(e)),
                };
            }
            ("GET", Some("counts")) => {
                // Every event seen, with how often its effects were applied.
                let counts = || -> Result<serde_json::Map<String, serde_json::Value>, String> {
                    let mut out = serde_json::Map::new();
                    for key in kv::keys_with_prefix(&bucket, "count/")? {
                        let n: u64 = kv::get_json(&bucket, &key)?.unwrap_or(0);
                        out.insert(key["count/".len()..].to_string(), n.into());
                    }
                    Ok(out)
                };
                return match counts() {
                    Ok(map) => Response::json(200, &map),
                    Err(e) => Response::internal_error(&e),
                };
            }
            ("POST", Some("fix")) => {
                return match bucket.delete("broken") {
                    Ok(()) => Response::new(204),
                    Err(e) => Response::internal_error(&kv::describe(e)),
                };
            }
            _ => {}
        }
        let (kind, name) = match segments.as_slice() {
            [.., kind, name] => (*kind, *name),
            _ => return Response::not_found("expected .../{count|order|event|latency}/{name}"),
        };
        match bucket.get(&format!("{kind}/{name}")) {
            Ok(Some(v)) => Response::new(200).with_body(v),
            Ok(None) if kind == "count" => Response::text(200, "0"),
            Ok(None) => Response::not_found(&format!("nothing under {kind}/{name}")),
            Err(e) => Response::internal_error(&kv::describe(e)),
        }
    }

    fn on_event(event: Event) -> Result<(), String> {
        let bucket = kv::open()?;
        let d = String::from_utf8_lossy(&event.data).into_owned();
        let count: u64 = kv::get_json(&bucket, &format!("count/{d}"))?.unwrap_or(0);
        kv::set_json(&bucket, &format!("count/{d}"), &(count + 1))?;
        // The benchmark turns this off: rewriting a growing list would be what it measures.
        if microhost_guest::config("record_order").as_deref() != Some("false") {
            let order_key = format!("order/{}", event.topic);
            let mut order: Vec<String> = kv::get_json(&bucket, &order_key)?.unwrap_or_default();
            order.push(d.clone());
            kv::set_json(&bucket, &order_key, &order)?;
        }
        let envelope = serde_json::json!({
            "id": event.id, "source": event.source, "topic": event.topic, "time": event.time,
            "offset": event.offset, "key": event.key, "content_type": event.content_type,
            "traceparent": event.traceparent, "attempt": event.attempt,
        });
        kv::set_json(&bucket, &format!("event/{d}"), &envelope)?;
        if let Some(published) = parse_micros(&event.time) {
            let latency = now_micros().saturating_sub(published) as u64;
            kv::set_json(&bucket, &format!("latency/{d}"), &latency)?;
        }
        if d.starts_with("fail2") && event.attempt <= 2 {
            return Err(format!("failing attempt {} on purpose", event.attempt));
        }
        if d.starts_with("poison") {
            return Err("poison event, failing on purpose".to_string());
        }
        if d.starts_with("fragile") && bucket.exists("broken").map_err(kv::describe)? {
            return Err("the service is broken".to_string());
        }
        if d.starts_with("trap") {
            panic!("trapping on event {d}");
        }
        Ok(())
    }
}

microhost_guest::service!(Subscriber);
