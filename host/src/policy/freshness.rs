//! Which answers the response cache may keep and for how long: the `Cache-Control`
//! directives of requests and responses that matter to a shared cache, and the rules
//! built on them.

use crate::config::CacheSpec;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use std::time::Duration;

/// The directives of a `Cache-Control` header that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

impl CacheControl {
    pub(crate) fn parse(headers: &HeaderMap) -> CacheControl {
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
pub(super) fn lifetime(spec: &CacheSpec, response: &http::Response<Bytes>) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
}
