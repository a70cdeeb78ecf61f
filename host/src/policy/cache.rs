//! The response cache of a route: the active version's `GET` answers that
//! [`lifetime`] lets it keep, in a store bounded by entries (moka, least recently used
//! out first), invalidated by path.

use super::freshness::lifetime;
use crate::config::CacheSpec;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use moka::policy::EvictionPolicy;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cached response.
struct Entry {
    /// The version that answered it: an answer of another version than the active one
    /// is never served fresh, only by the cached fallback (the last good answer of the
    /// version before a bad deploy).
    version: String,
    /// The request path, for invalidation by writes.
    path: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    /// How long it is fresh; after that only a fallback serves it.
    ttl: Duration,
}

impl Entry {
    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored)
    }

    fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.ttl
    }
}

/// `GET` responses of one service: the active version's, fresh; and what earlier
/// versions answered, for `fallback = cached` only.
pub(crate) struct Cache {
    pub(crate) spec: CacheSpec,
    /// Keyed by [`Cache::key`]. Nothing expires here: an entry past its lifetime (or of
    /// an earlier version) stays until it is evicted, invalidated or replaced, for
    /// `fallback = cached`.
    entries: moka::sync::Cache<String, Arc<Entry>>,
}

impl Cache {
    pub(super) fn new(spec: &CacheSpec) -> Cache {
        let capacity = u64::try_from(spec.max_entries).unwrap_or(u64::MAX);
        Cache {
            spec: spec.clone(),
            // Least recently used out first: moka's default (TinyLFU) may refuse a new
            // answer while the store is full of popular ones, and a refused answer
            // would be a MISS on every request for it.
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
        }
    }

    /// The cache key of a request: whose answers it may share (see `cache_owner`) and
    /// what it asks for.
    pub(crate) fn key(owner: &str, uri: &http::Uri) -> String {
        let what = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{owner}\n{what}")
    }

    /// Drops every entry for `path` (any query, anyone's).
    pub(crate) fn invalidate_path(&self, path: &str) {
        for (key, entry) in self.entries.iter() {
            if entry.path == path {
                self.entries.invalidate(&*key);
            }
        }
    }

    /// The cached response for `key` of `version`: a fresh one only, or (`stale_ok`, for
    /// fallbacks) one past its lifetime or of an earlier version too.
    pub(crate) fn get(
        &self,
        version: &str,
        key: &str,
        stale_ok: bool,
    ) -> Option<http::Response<Bytes>> {
        self.get_at(version, key, stale_ok, Instant::now())
    }

    fn get_at(
        &self,
        version: &str,
        key: &str,
        stale_ok: bool,
        now: Instant,
    ) -> Option<http::Response<Bytes>> {
        let entry = self.entries.get(key)?;
        if !stale_ok && (entry.version != version || !entry.is_fresh(now)) {
            return None;
        }
        let mut response = http::Response::new(entry.body.clone());
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
        Some(response)
    }

    /// Keeps `response` (answered by `version`) if it may be cached (see [`lifetime`]).
    pub(crate) fn store(
        &self,
        version: &str,
        key: &str,
        path: &str,
        response: &http::Response<Bytes>,
    ) {
        self.store_at(version, key, path, response, Instant::now());
    }

    fn store_at(
        &self,
        version: &str,
        key: &str,
        path: &str,
        response: &http::Response<Bytes>,
        now: Instant,
    ) {
        let Some(ttl) = lifetime(&self.spec, response) else {
            return;
        };
        let entry = Entry {
            version: version.to_string(),
            path: path.to_string(),
            status: response.status(),
            headers: response.headers().clone(),
            body: response.body().clone(),
            stored: now,
            ttl,
        };
        self.entries.insert(key.to_string(), Arc::new(entry));
    }

    /// Entries now held (after the store's pending evictions and invalidations).
    pub(crate) fn len(&self) -> usize {
        self.entries.run_pending_tasks();
        usize::try_from(self.entries.entry_count()).unwrap_or(usize::MAX)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(cache.len(), 2, "bounded by max_entries");
        assert!(cache.get("v1", "a", true).is_none(), "oldest evicted");
        assert!(
            cache.get("v2", "f", false).is_none(),
            "another version's answer is never fresh"
        );
        assert!(
            cache.get("v2", "f", true).is_some(),
            "but the fallback may serve it"
        );
        cache.store("v2", "f", "/f", &ok("f2", None));
        assert!(cache.get("v2", "f", false).is_some(), "replaced by v2's");
        cache.invalidate_path("/e");
        cache.invalidate_path("/f");
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
    fn spec() -> CacheSpec {
        CacheSpec {
            ttl_ms: 1_500,
            max_entries: 10,
            max_entry_kib: 1,
        }
    }

    #[test]
    fn fresh_for_its_lifetime_then_only_for_fallbacks() {
        let cache = Cache::new(&spec());
        let t0 = Instant::now();
        cache.store_at("v1", "k", "/k", &ok("k", Some("max-age=10")), t0);
        let age = |r: Option<http::Response<Bytes>>| {
            r.and_then(|r| {
                r.headers()
                    .get(header::AGE)?
                    .to_str()
                    .ok()?
                    .parse::<u64>()
                    .ok()
            })
        };
        assert_eq!(age(cache.get_at("v1", "k", false, t0)), Some(0));
        assert_eq!(
            age(cache.get_at("v1", "k", false, t0 + Duration::from_millis(9_999))),
            Some(9)
        );
        assert!(
            cache
                .get_at("v1", "k", false, t0 + Duration::from_secs(10))
                .is_none(),
            "stale"
        );
        let day = Duration::from_secs(86_400);
        assert_eq!(
            age(cache.get_at("v1", "k", true, t0 + day)),
            Some(86_400),
            "a fallback takes it however old"
        );
        assert!(
            cache.get_at("v2", "k", false, t0).is_none(),
            "never fresh for another version"
        );
        assert!(
            cache.get_at("v2", "k", true, t0).is_some(),
            "a fallback of v2 may take v1's last answer"
        );
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let cache = Cache::new(&CacheSpec {
            max_entries: 2,
            ..spec()
        });
        cache.store("v1", "a", "/a", &ok("a", None));
        cache.store("v1", "b", "/b", &ok("b", None));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("v1", "a", false).is_some());
        assert_eq!(cache.len(), 2);
        cache.store("v1", "c", "/c", &ok("c", None));
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get("v1", "b", true).is_none(),
            "b was read least recently"
        );
        assert!(cache.get("v1", "a", false).is_some());
        assert!(cache.get("v1", "c", false).is_some());
    }
}
