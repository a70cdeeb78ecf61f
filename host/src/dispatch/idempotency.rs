//! Idempotency keys (the IETF `Idempotency-Key` header draft, as payment APIs offer
//! them): a `POST` or `PATCH` that carries one runs once. Its answer is stored in the
//! same commit as its effects, so no crash can separate the two; a retry with the same
//! key from the same caller gets that answer (`idempotent-replayed: true`), one with a
//! different request under the key gets `422`, one while the first is still running
//! `409`. A key's answer is kept for the route's `policy.idempotency.ttl_secs`; an
//! expired one is as if never stored, and [`sweep`] deletes it. Answers that do not commit (5xx) are not stored:
//! the client's retry runs the request again, as it would have without a key.

use super::stored::StoredResponse;
use crate::bus::unit::UnitOfWork;
use crate::problem::problem_bytes;
use crate::store::keys;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// The request header.
pub(crate) const HEADER: &str = "idempotency-key";
/// The header a stored answer is sent back with.
pub(crate) const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key accepted.
pub(crate) const MAX_KEY_LEN: usize = 255;

/// The keys being run now on this host.
#[derive(Default)]
pub(crate) struct Running(Mutex<HashSet<Vec<u8>>>);

/// A key this request holds while it runs.
pub(crate) struct Claim {
    running: Arc<Running>,
    key: Vec<u8>,
    fingerprint: String,
    /// The digest of what was stored under the key when looked up (an expired answer),
    /// checked again at commit.
    seen: Option<[u8; 32]>,
    ttl_ms: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.running.0.lock().remove(&self.key);
    }
}

/// What a stored answer holds.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// Of the method, path with query, and body of the request that ran.
    fingerprint: String,
    #[serde(flatten)]
    answer: StoredResponse,
    expires_ms: u64,
}

/// What to do with a request.
pub(crate) enum Verdict {
    /// No key (or a method that is idempotent anyway): run it as usual.
    Run,
    /// Run it holding the claim; [`Claim::record`] its answer into the unit of work.
    Claimed(Claim),
    /// Answer this without running it: the stored answer, or why not.
    Answer(http::Response<Bytes>),
    /// The stored answer could not be read: the host's failure.
    Failed(String),
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fingerprint(parts: &http::request::Parts, body: &Bytes) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(
        parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    hasher.update([0]);
    hasher.update(body);
    hex::encode(hasher.finalize())
}

fn refuse(status: StatusCode, detail: String) -> Verdict {
    Verdict::Answer(problem_bytes(status, detail, serde_json::Map::new()))
}

/// Looks the request's key up: `caller` is the verified subject (`None`: anonymous).
pub(crate) async fn begin(
    bus: &crate::bus::Bus,
    running: &Arc<Running>,
    service: &str,
    ttl_secs: u64,
    caller: Option<&str>,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Verdict {
    if !matches!(parts.method, Method::POST | Method::PATCH) {
        return Verdict::Run;
    }
    let Some(value) = parts.headers.get(HEADER) else {
        return Verdict::Run;
    };
    let key = match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY_LEN => key,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} visible ASCII characters"
                ),
            );
        }
    };
    let storage_key = keys::idempotency(service, caller.unwrap_or(""), key);
    if !running.0.lock().insert(storage_key.clone()) {
        return refuse(
            StatusCode::CONFLICT,
            format!(
                "a request with Idempotency-Key {key:?} is still running: retry once it has answered"
            ),
        );
    }
    let claim = Claim {
        running: running.clone(),
        key: storage_key,
        fingerprint: fingerprint(parts, body),
        seen: None,
        ttl_ms: ttl_secs.saturating_mul(1000),
    };
    let stored = match bus.read_durable(&claim.key).await {
        Ok(stored) => stored,
        Err(e) => {
            return Verdict::Failed(format!(
                "reading the answer of Idempotency-Key {key:?} failed: {e}"
            ));
        }
    };
    let Some(bytes) = stored else {
        return Verdict::Claimed(claim);
    };
    let record: Stored = match serde_json::from_slice(&bytes) {
        Ok(record) => record,
        Err(e) => {
            return Verdict::Failed(format!(
                "the stored answer of Idempotency-Key {key:?} is corrupt: {e}"
            ));
        }
    };
    if record.expires_ms <= now_ms() {
        let mut claim = claim;
        claim.seen = Some(crate::bus::unit::digest(&bytes));
        return Verdict::Claimed(claim);
    }
    if record.fingerprint != claim.fingerprint {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "Idempotency-Key {key:?} was used for a different request (method, path or body): \
                 a key names one request"
            ),
        );
    }
    let mut response = record.answer.to_response();
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    Verdict::Answer(response)
}

/// Deletes every expired answer; returns how many.
pub(crate) async fn sweep(bus: &crate::bus::Bus) -> Result<usize, crate::store::StoreError> {
    let now = now_ms();
    let expired = |value: &[u8]| {
        serde_json::from_slice::<Stored>(value).is_ok_and(|stored| stored.expires_ms <= now)
    };
    bus.delete_expired(keys::IDEMPOTENCY_PREFIX, &expired).await
}

impl Claim {
    /// Adds the answer to the invocation's unit of work, so that it commits with the
    /// effects (and the commit fails if another answer was stored meanwhile).
    pub(crate) fn record(&self, response: &http::Response<Bytes>, unit: &mut UnitOfWork) {
        let stored = Stored {
            fingerprint: self.fingerprint.clone(),
            answer: StoredResponse::of(response),
            expires_ms: now_ms().saturating_add(self.ttl_ms),
        };
        let bytes = serde_json::to_vec(&stored).expect("a stored answer serializes");
        unit.reads.insert(self.key.clone(), self.seen);
        unit.host.push((self.key.clone(), bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, SledStorage, Storage};

    #[tokio::test]
    async fn the_sweep_deletes_expired_answers_only() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let storage = Arc::new(Storage::new(SledStorage::open(dir.path())?));
        let bus = crate::bus::Bus::new(storage.clone());
        let record = |expires_ms| {
            serde_json::to_vec(&Stored {
                fingerprint: String::new(),
                answer: StoredResponse {
                    status: 200,
                    headers: Vec::new(),
                    body: String::new(),
                },
                expires_ms,
            })
        };
        let (old, fresh) = (
            keys::idempotency("svc", "", "old"),
            keys::idempotency("svc", "", "fresh"),
        );
        let (old_value, fresh_value) = (record(1)?, record(now_ms() + 60_000)?);
        storage.transact(&mut |_| {
            let mut batch = Batch::default();
            batch.put(old.clone(), old_value.clone());
            batch.put(fresh.clone(), fresh_value.clone());
            batch.put(keys::kv("svc", "default", "other"), b"kept".to_vec());
            Ok(batch)
        })?;
        assert_eq!(sweep(&bus).await?, 1);
        assert_eq!(bus.read_durable(&old).await?, None);
        assert_eq!(bus.read_durable(&fresh).await?, Some(fresh_value));
        assert_eq!(
            bus.read_durable(&keys::kv("svc", "default", "other"))
                .await?,
            Some(b"kept".to_vec())
        );
        assert_eq!(sweep(&bus).await?, 0);
        Ok(())
    }
}
