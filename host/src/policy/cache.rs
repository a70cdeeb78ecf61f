//! The response cache of a route: which `GET` answers may be kept and for how long
//! (`Cache-Control`), a bounded store per active version, and invalidation by path.

use crate::config::CacheSpec;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A cached response.
#[derive(Clone)]
struct Entry {
    /// The request path, for invalidation by writes.
    path: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    ttl: Duration,
}

/// `GET` responses of one service's active version.
pub struct Cache {
    pub spec: CacheSpec,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// The version the entries came from; another one empties the cache.
    version: String,
    entries: HashMap<String, Entry>,
    /// Keys, oldest first, for eviction.
    order: VecDeque<String>,
}

/// The directives of a `Cache-Control` header that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let directive = directive.trim().to_ascii_lowercase();
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim().to_string(), Some(a.trim().trim_matches('"'))),
                    None => (directive.clone(), None),
                };
                match (name.as_str(), arg) {
                    ("no-store", _) => cc.no_store = true,
                    ("no-cache", _) => cc.no_cache = true,
                    ("private", _) => cc.private = true,
                    ("max-age", Some(a)) => cc.max_age = a.parse().ok(),
                    ("s-maxage", Some(a)) => cc.s_maxage = a.parse().ok(),
                    _ => {}
                }
            }
        }
        if headers
            .get(header::PRAGMA)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        {
            cc.no_cache = true;
        }
        cc
    }
}

impl Cache {
    pub(super) fn new(spec: &CacheSpec) -> Cache {
        Cache {
            spec: spec.clone(),
            state: Mutex::new(CacheState::default()),
        }
    }

    /// The cache key of a request: whose answers it may share (see `cache_owner`) and
    /// what it asks for.
    pub fn key(owner: &str, uri: &http::Uri) -> String {
        let what = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{owner}\n{what}")
    }

    /// Drops every entry for `path` (any query, anyone's).
    pub fn invalidate_path(&self, path: &str) {
        let mut state = self.state.lock();
        let CacheState { entries, order, .. } = &mut *state;
        entries.retain(|_, entry| entry.path != path);
        order.retain(|key| entries.contains_key(key));
    }

    fn state_for(&self, version: &str) -> parking_lot::MutexGuard<'_, CacheState> {
        let mut state = self.state.lock();
        if state.version != version {
            state.entries.clear();
            state.order.clear();
            state.version = version.to_string();
        }
        state
    }

    /// The cached response for `key` of `version`: a fresh one only, or one past its
    /// lifetime too (`stale_ok`, for fallbacks).
    pub fn get(&self, version: &str, key: &str, stale_ok: bool) -> Option<http::Response<Bytes>> {
        let state = self.state_for(version);
        let entry = state.entries.get(key)?;
        let age = entry.stored.elapsed();
        if age >= entry.ttl && !stale_ok {
            return None;
        }
        let mut response = http::Response::new(entry.body.clone());
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age.as_secs()));
        Some(response)
    }

    /// Keeps `response` (answered by `version`) if it may be cached.
    pub fn store(&self, version: &str, key: &str, path: &str, response: &http::Response<Bytes>) {
        if response.status() != StatusCode::OK
            || response.headers().contains_key(header::SET_COOKIE)
            || response.headers().contains_key(header::VARY)
            || response.body().len() as u64 > self.spec.max_entry_kib.saturating_mul(1024)
        {
            return;
        }
        let cc = CacheControl::parse(response.headers());
        if cc.no_store || cc.no_cache || cc.private {
            return;
        }
        let ttl = match cc.s_maxage.or(cc.max_age) {
            Some(0) => return,
            Some(secs) => Duration::from_secs(secs),
            None => Duration::from_millis(self.spec.ttl_ms),
        };
        let entry = Entry {
            path: path.to_string(),
            status: response.status(),
            headers: response.headers().clone(),
            body: response.body().clone(),
            stored: Instant::now(),
            ttl,
        };
        let mut state = self.state_for(version);
        if state.entries.insert(key.to_string(), entry).is_none() {
            state.order.push_back(key.to_string());
        }
        while state.entries.len() > self.spec.max_entries {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            state.entries.remove(&oldest);
        }
    }

    /// Entries now held.
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, Max-Age=60, s-maxage=\"30\""),
        );
        let cc = CacheControl::parse(&h);
        assert_eq!((cc.max_age, cc.s_maxage), (Some(60), Some(30)));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(CacheControl::parse(&h).no_store);
    }

    fn ok(body: &'static str, cc: Option<&'static str>) -> http::Response<Bytes> {
        let mut r = http::Response::new(Bytes::from_static(body.as_bytes()));
        if let Some(cc) = cc {
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
        }
        r
    }

    #[test]
    fn cache_honours_directives_versions_and_size() {
        let cache = Cache::new(&CacheSpec {
            ttl_ms: 60_000,
            max_entries: 2,
            max_entry_kib: 1,
        });
        cache.store("v1", "a", "/a", &ok("a", None));
        assert!(cache.get("v1", "a", false).is_some());
        cache.store("v1", "b", "/b", &ok("b", Some("no-store")));
        cache.store("v1", "c", "/c", &ok("c", Some("private")));
        cache.store("v1", "d", "/d", &ok("d", Some("max-age=0")));
        assert_eq!(
            cache.len(),
            1,
            "no-store, private and max-age=0 are not kept"
        );
        cache.store("v1", "e", "/e", &ok("e", None));
        cache.store("v1", "f", "/f", &ok("f", None));
        assert!(cache.get("v1", "a", true).is_none(), "oldest evicted");
        assert!(
            cache.get("v2", "f", true).is_none(),
            "another version empties it"
        );
        assert!(cache.is_empty());
        let big = ok(Box::leak("x".repeat(2048).into_boxed_str()), None);
        cache.store("v2", "big", "/big", &big);
        assert!(cache.is_empty(), "too large to keep");
        cache.store("v2", "x\n/p?q=1", "/p", &ok("p", None));
        cache.store("v2", "y\n/p", "/p", &ok("p", None));
        cache.store("v2", "y\n/other", "/other", &ok("o", None));
        cache.invalidate_path("/p");
        assert_eq!(cache.len(), 1, "a write to /p drops its entries, whoever's");
    }
}
