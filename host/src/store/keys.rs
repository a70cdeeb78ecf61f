//! The key layout in storage. Every key starts with a one-letter space and a '/', then
//! its parts separated by NUL bytes (which names and topics never contain), so that a
//! prefix scan never crosses into a neighbour.
//!
//! | key | value |
//! |---|---|
//! | `k/{service}\0{bucket}\0{key}` | a service's key-value entry |
//! | `l/{topic}\0{offset: u64 BE}` | an event in a topic's log |
//! | `c/{topic}\0{service}` | a subscription's cursor: next offset to deliver (u64 BE) |
//! | `a/{topic}\0{service}` | delivery attempts of the subscription's current item |
//! | `d/{topic}\0{service}\0{seq: u64 BE}` | a dead letter |
//! | `r/{topic}\0{service}\0{seq: u64 BE}` | a redriven event waiting for redelivery |
//! | `g/{service}` | the registry's record of a service: versions, active, canary |
//! | `h/{service}\0{seq: u64 BE}` | an entry of a service's deployment history |
//! | `i/{service}\0{sha256(caller, key): hex}` | the stored answer of an idempotency key |
//! | `q/{service}\0{seq: u64 BE}` | a request queued by a `queue` fallback, waiting for replay |
//! | `j/{id}` | where a queued request stands: queued, or its stored result |

const SEP: u8 = 0;

fn join(space: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = vec![space, b'/'];
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

/// Prefix of every key of `bucket` in `service`'s keyspace.
pub(crate) fn kv_prefix(service: &str, bucket: &str) -> Vec<u8> {
    let mut key = join(b'k', &[service.as_bytes(), bucket.as_bytes()]);
    key.push(SEP);
    key
}

pub(crate) fn kv(service: &str, bucket: &str, key: &str) -> Vec<u8> {
    let mut k = kv_prefix(service, bucket);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Prefix of a topic's log.
pub(crate) fn log_prefix(topic: &str) -> Vec<u8> {
    let mut key = join(b'l', &[topic.as_bytes()]);
    key.push(SEP);
    key
}

pub(crate) fn log(topic: &str, offset: u64) -> Vec<u8> {
    let mut key = log_prefix(topic);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

pub(crate) fn cursor(topic: &str, service: &str) -> Vec<u8> {
    join(b'c', &[topic.as_bytes(), service.as_bytes()])
}

pub(crate) fn attempts(topic: &str, service: &str) -> Vec<u8> {
    join(b'a', &[topic.as_bytes(), service.as_bytes()])
}

/// Prefix of a subscription's dead letters.
pub(crate) fn dead_prefix(topic: &str, service: &str) -> Vec<u8> {
    let mut key = join(b'd', &[topic.as_bytes(), service.as_bytes()]);
    key.push(SEP);
    key
}

/// Prefix of a subscription's redrive queue.
pub(crate) fn redrive_prefix(topic: &str, service: &str) -> Vec<u8> {
    let mut key = join(b'r', &[topic.as_bytes(), service.as_bytes()]);
    key.push(SEP);
    key
}

/// The registry's record of `service`.
pub(crate) fn registry_record(service: &str) -> Vec<u8> {
    join(b'g', &[service.as_bytes()])
}

/// The stored answer of idempotency key `key` sent by `caller` to `service`.
pub(crate) fn idempotency(service: &str, caller: &str, key: &str) -> Vec<u8> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(caller.as_bytes());
    hasher.update([SEP]);
    hasher.update(key.as_bytes());
    join(
        b'i',
        &[
            service.as_bytes(),
            hex::encode(hasher.finalize()).as_bytes(),
        ],
    )
}

/// Prefix of every stored idempotency answer.
pub(crate) const IDEMPOTENCY_PREFIX: &[u8] = b"i/";

/// Prefix of the requests queued for `service`, in arrival order.
pub(crate) fn queue_prefix(service: &str) -> Vec<u8> {
    let mut key = join(b'q', &[service.as_bytes()]);
    key.push(SEP);
    key
}

/// Where the queued request `id` stands.
pub(crate) fn queued_job(id: &str) -> Vec<u8> {
    join(b'j', &[id.as_bytes()])
}

/// Prefix of every queued request's standing.
pub(crate) const QUEUED_JOB_PREFIX: &[u8] = b"j/";

/// Prefix of `service`'s deployment history.
pub(crate) fn history_prefix(service: &str) -> Vec<u8> {
    let mut key = join(b'h', &[service.as_bytes()]);
    key.push(SEP);
    key
}

/// `prefix` followed by a big-endian sequence number.
pub(crate) fn seq(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// The big-endian number at the end of a key built with [`log`] or [`seq`], or in a
/// value written by [`encode_u64`].
pub(crate) fn trailing_u64(key: &[u8]) -> u64 {
    let mut n = [0u8; 8];
    if key.len() >= 8 {
        n.copy_from_slice(&key[key.len() - 8..]);
    }
    u64::from_be_bytes(n)
}

pub(crate) fn encode_u64(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_do_not_cross_neighbours() {
        assert!(!kv("ab", "c", "x").starts_with(&kv_prefix("a", "bc")));
        assert!(kv("a", "b", "x").starts_with(&kv_prefix("a", "b")));
        assert!(!log("order.created2", 1).starts_with(&log_prefix("order.created")));
        assert!(log(".t", 5) > log(".t", 4));
        assert!(log("t", 256) > log("t", 255), "offsets sort numerically");
        assert_eq!(trailing_u64(&log("t", 77)), 77);
    }
}
