//! Request ids and W3C trace context at the edge. A request keeps a sane incoming
//! `x-request-id` or gets a new one; a valid incoming `traceparent` keeps its trace id
//! and gets the gateway's span as parent, anything else starts a new trace. Both reach
//! the component as headers, go on with its calls to other services and with the
//! events it publishes, and come back on the response (`x-request-id`).

use rand::Rng as _;

/// The incoming request id if it is 1 to 128 visible characters without spaces, else
/// a new random one (UUID v4 form).
pub(crate) fn request_id(incoming: Option<&http::HeaderValue>) -> String {
    if let Some(id) = incoming.and_then(|v| v.to_str().ok())
        && (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_graphic())
    {
        return id.to_string();
    }
    let mut bytes: [u8; 16] = rand::thread_rng().r#gen();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut hex = [0u8; 32];
    let _ = hex::encode_to_slice(bytes, &mut hex);
    let mut id = String::with_capacity(36);
    for (i, range) in [0..8, 8..12, 12..16, 16..20, 20..32]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            id.push('-');
        }
        id.extend(hex[range].iter().map(|&b| char::from(b)));
    }
    id
}

/// The trace id and flags of a valid `traceparent` (version 00 layout; a higher
/// version is read the same way, as the spec asks).
fn parse(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = hex(version, 2)
        && version != "ff"
        && (version != "00" || rest.is_none())
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    ok.then_some((trace, flags))
}

/// A `traceparent` for the gateway's hop: the incoming trace continued, or a new one.
pub(crate) fn child_traceparent(incoming: Option<&http::HeaderValue>) -> String {
    let mut rng = rand::thread_rng();
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    let push_hex = |out: &mut String, bytes: &[u8]| {
        let mut buf = [0u8; 32];
        let hex = &mut buf[..bytes.len() * 2];
        let _ = hex::encode_to_slice(bytes, hex);
        out.extend(hex.iter().map(|&b| char::from(b)));
    };
    let continued = incoming.and_then(|v| v.to_str().ok()).and_then(parse);
    match continued {
        Some((trace, _)) => out.push_str(trace),
        None => push_hex(&mut out, &rng.r#gen::<u128>().max(1).to_be_bytes()),
    }
    out.push('-');
    push_hex(&mut out, &rng.r#gen::<u64>().max(1).to_be_bytes());
    out.push('-');
    out.push_str(continued.map_or("01", |(_, flags)| flags));
    out
}

/// The trace id of a `traceparent` we made or accepted.
pub(crate) fn trace_id(traceparent: &str) -> Option<&str> {
    parse(traceparent).map(|(trace, _)| trace)
}

/// The span id (parent id) of a `traceparent` we made or accepted.
pub(crate) fn span_id(traceparent: &str) -> Option<&str> {
    parse(traceparent).and_then(|_| traceparent.split('-').nth(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_pass_through_or_are_made() {
        let given = http::HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&given)), "abc-123");
        let spaced = http::HeaderValue::from_static("has space");
        let made = request_id(Some(&spaced));
        assert_eq!(made.len(), 36);
        assert_ne!(made, request_id(None));
    }

    #[test]
    fn traceparent_continues_valid_traces_only() {
        let incoming = http::HeaderValue::from_static(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let child = child_traceparent(Some(&incoming));
        assert_eq!(trace_id(&child), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(!child.contains("00f067aa0ba902b7"), "a new parent id");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let child = child_traceparent(Some(&http::HeaderValue::from_static(bad)));
            assert_ne!(
                trace_id(&child),
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{bad}"
            );
            assert!(trace_id(&child).is_some(), "a new valid trace for {bad}");
        }
    }
}
