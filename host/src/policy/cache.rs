//! The response cache of a route: which `GET` answers may be kept and for how long
//! (`Cache-Control`, decided here), in a store bounded by entries (moka, least recently
//! used out first) holding the active version's answers, invalidated by path.

use crate::config::CacheSpec;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use moka::policy::EvictionPolicy;
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cached response.
struct Entry {
    /// The version that answered it: one from before a version change is never served.
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

/// `GET` responses of one service's active version.
pub struct Cache {
    pub spec: CacheSpec,
    /// The version the entries came from; another one empties the store.
    version: RwLock<String>,
    /// Keyed by [`Cache::key`]. Nothing expires here: an entry past its lifetime stays
    /// until it is evicted, invalidated or the version changes, for `fallback = cached`.
    entries: moka::sync::Cache<String, Arc<Entry>>,
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

/// How long `response` may be served from the cache, or `None` if it may not be kept:
/// only a `200` without `Set-Cookie` or `Vary`, no larger than `max_entry_kib`, and not
/// `no-store`, `no-cache` or `private`; fresh for its `s-maxage`, else `max-age`, else
/// the route's `ttl_ms` (a lifetime of zero is not kept).
pub fn lifetime(spec: &CacheSpec, response: &http::Response<Bytes>) -> Option<Duration> {
    if response.status() != StatusCode::OK
        || response.headers().contains_key(header::SET_COOKIE)
        || response.headers().contains_key(header::VARY)
        || response.body().len() as u64 > spec.max_entry_kib.saturating_mul(1024)
    {
        return None;
    }
    let cc = CacheControl::parse(response.headers());
    if cc.no_store || cc.no_cache || cc.private {
        return None;
    }
    match cc.s_maxage.or(cc.max_age) {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
        None => Some(Duration::from_millis(spec.ttl_ms)),
    }
}

impl Cache {
    pub(super) fn new(spec: &CacheSpec) -> Cache {
        let capacity = u64::try_from(spec.max_entries).unwrap_or(u64::MAX);
        Cache {
            spec: spec.clone(),
            version: RwLock::new(String::new()),
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
    pub fn key(owner: &str, uri: &http::Uri) -> String {
        let what = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{owner}\n{what}")
    }

    /// Drops every entry for `path` (any query, anyone's).
    pub fn invalidate_path(&self, path: &str) {
        for (key, entry) in self.entries.iter() {
            if entry.path == path {
                self.entries.invalidate(&*key);
            }
        }
    }

    /// Empties the store if its entries are not `version`'s.
    fn switch_to(&self, version: &str) {
        if *self.version.read() == version {
            return;
        }
        let mut current = self.version.write();
        if *current != version {
            self.entries.invalidate_all();
            *current = version.to_string();
        }
    }

    /// The cached response for `key` of `version`: a fresh one only, or one past its
    /// lifetime too (`stale_ok`, for fallbacks).
    pub fn get(&self, version: &str, key: &str, stale_ok: bool) -> Option<http::Response<Bytes>> {
        self.get_at(version, key, stale_ok, Instant::now())
    }

    fn get_at(
        &self,
        version: &str,
        key: &str,
        stale_ok: bool,
        now: Instant,
    ) -> Option<http::Response<Bytes>> {
        self.switch_to(version);
        let entry = self.entries.get(key)?;
        if entry.version != version || !(stale_ok || entry.is_fresh(now)) {
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
    pub fn store(&self, version: &str, key: &str, path: &str, response: &http::Response<Bytes>) {
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
        self.switch_to(version);
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
    pub fn len(&self) -> usize {
        self.entries.run_pending_tasks();
        usize::try_from(self.entries.entry_count()).unwrap_or(usize::MAX)
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
        assert_eq!(cache.len(), 2, "bounded by max_entries");
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

    fn spec() -> CacheSpec {
        CacheSpec {
            ttl_ms: 1_500,
            max_entries: 10,
            max_entry_kib: 1,
        }
    }

    fn with(
        response: http::Response<Bytes>,
        name: &'static str,
        value: &'static str,
    ) -> http::Response<Bytes> {
        let mut response = response;
        response
            .headers_mut()
            .append(name, HeaderValue::from_static(value));
        response
    }

    #[test]
    fn lifetime_follows_the_response() {
        let spec = spec();
        let kept = |r: &http::Response<Bytes>| lifetime(&spec, r);
        assert_eq!(
            kept(&ok("a", None)),
            Some(Duration::from_millis(1_500)),
            "ttl_ms"
        );
        assert_eq!(
            kept(&ok("a", Some("max-age=60"))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            kept(&ok("a", Some("max-age=60, s-maxage=30"))),
            Some(Duration::from_secs(30)),
            "s-maxage is for shared caches"
        );
        assert_eq!(
            kept(&ok("a", Some("public"))),
            Some(Duration::from_millis(1_500))
        );
        for cc in [
            "no-store",
            "no-cache",
            "private",
            "max-age=0",
            "s-maxage=0, max-age=60",
        ] {
            assert_eq!(kept(&ok("a", Some(cc))), None, "{cc}");
        }
        assert_eq!(kept(&with(ok("a", None), "pragma", "no-cache")), None);
        assert_eq!(
            kept(&with(ok("a", Some("public")), "set-cookie", "sid=1")),
            None
        );
        assert_eq!(kept(&with(ok("a", None), "vary", "accept-language")), None);
        let mut missing = ok("a", Some("max-age=60"));
        *missing.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(kept(&missing), None, "200 only");
        let big = ok(Box::leak("x".repeat(1025).into_boxed_str()), None);
        assert_eq!(kept(&big), None, "over max_entry_kib");
    }

    #[test]
    fn requests_ask_for_fresh_answers() {
        let asked = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            CacheControl::parse(&h)
        };
        assert!(asked("cache-control", "no-cache").no_cache);
        assert!(asked("pragma", "No-Cache").no_cache);
        assert!(asked("cache-control", "max-age=0, no-store").no_store);
        assert_eq!(
            asked("cache-control", "max-age=5"),
            CacheControl {
                max_age: Some(5),
                ..CacheControl::default()
            }
        );
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
            cache.get_at("v2", "k", true, t0).is_none(),
            "not another version's"
        );
        assert!(
            cache.get_at("v1", "k", true, t0).is_none(),
            "the version change emptied it"
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
