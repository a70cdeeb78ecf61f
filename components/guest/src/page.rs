//! Pages of a listing: `?limit=N&after=ID` in, `{"items": [...], "next": ID | null}` out,
//! the same for every list route.

use crate::{Error, Request};
use serde::Serialize;

/// Most items one page may hold.
pub const MAX_LIMIT: usize = 100;
/// Page size when neither the request nor the config (`default_page_size`) sets one.
pub const DEFAULT_LIMIT: usize = 20;

/// What page a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many items, 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// Only ids sorting after this one: the `next` of the previous page.
    pub after: Option<String>,
}

impl PageRequest {
    /// The page `req` asks for: `limit` (default: the service's `default_page_size`
    /// config value, else [`DEFAULT_LIMIT`]) and `after`. A bad `limit` is a 400 problem.
    pub fn from_request(req: &Request) -> Result<PageRequest, Error> {
        let default = crate::config("default_page_size");
        PageRequest::parse(
            req.query_param("limit"),
            req.query_param("after"),
            default.as_deref(),
        )
    }

    fn parse(
        limit: Option<&str>,
        after: Option<&str>,
        default: Option<&str>,
    ) -> Result<PageRequest, Error> {
        let in_range = |n: &usize| (1..=MAX_LIMIT).contains(n);
        let limit = match limit {
            // A bad config value is the operator's, not the client's: use the built-in
            // one for what is not a size, and the most a page holds for one too large.
            None => default
                .and_then(|d| d.parse::<usize>().ok())
                .filter(|n| *n >= 1)
                .map_or(DEFAULT_LIMIT, |n| n.min(MAX_LIMIT)),
            Some(raw) => raw.parse().ok().filter(in_range).ok_or_else(|| {
                Error::bad_request(&format!(
                    "query parameter \"limit\" must be a whole number from 1 to {MAX_LIMIT}, got {raw:?}"
                ))
            })?,
        };
        Ok(PageRequest {
            limit,
            after: after.filter(|a| !a.is_empty()).map(str::to_string),
        })
    }

    /// The page of `ids` (sorted ascending) this request selects: those after `after`,
    /// at most `limit`, with `next` set to the last of them when more follow.
    pub fn select(&self, ids: impl IntoIterator<Item = String>) -> Page<String> {
        let after = self.after.as_deref().unwrap_or("");
        let mut ids = ids.into_iter().filter(|id| id.as_str() > after);
        let items: Vec<String> = ids.by_ref().take(self.limit).collect();
        let next = match ids.next() {
            Some(_) => items.last().cloned(),
            None => None,
        };
        Page { items, next }
    }
}

/// One page of a listing, serialized as `{"items": [...], "next": "<id>" | null}`. Pass
/// `next` as `after` to get the page that follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The same page with each item looked up by `f`; items it finds nothing for are left
    /// out, and `next` stays as it was.
    pub fn try_filter_map<U, E>(
        self,
        mut f: impl FnMut(T) -> Result<Option<U>, E>,
    ) -> Result<Page<U>, E> {
        let mut items = Vec::with_capacity(self.items.len());
        for item in self.items {
            if let Some(found) = f(item)? {
                items.push(found);
            }
        }
        Ok(Page {
            items,
            next: self.next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn page(limit: usize, after: Option<&str>) -> PageRequest {
        PageRequest {
            limit,
            after: after.map(str::to_string),
        }
    }

    #[test]
    fn limit_comes_from_the_query_then_the_config_then_the_default() {
        let parse = |limit, default| PageRequest::parse(limit, None, default).map(|p| p.limit);
        assert_eq!(parse(Some("7"), Some("2")).ok(), Some(7));
        assert_eq!(parse(None, Some("2")).ok(), Some(2));
        assert_eq!(parse(None, None).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(parse(None, Some("0")).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(parse(None, Some("lots")).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(
            parse(None, Some("500")).ok(),
            Some(MAX_LIMIT),
            "capped, not ignored"
        );
        assert_eq!(parse(Some("100"), None).ok(), Some(100));
    }

    #[test]
    fn a_bad_limit_is_a_400_naming_it() {
        for bad in ["0", "101", "-1", "ten", ""] {
            let Err(e) = PageRequest::parse(Some(bad), None, None) else {
                panic!("limit {bad:?} was accepted");
            };
            let response = e.into_response();
            assert_eq!(response.status, 400);
            let body: serde_json::Value =
                serde_json::from_slice(&response.body).expect("a problem body is JSON");
            assert_eq!(
                body["detail"],
                format!(
                    "query parameter \"limit\" must be a whole number from 1 to 100, got {bad:?}"
                )
            );
        }
    }

    #[test]
    fn an_empty_after_starts_at_the_beginning() {
        let p = PageRequest::parse(None, Some(""), None).expect("valid");
        assert_eq!(p.after, None);
    }

    #[test]
    fn pages_follow_next_to_the_end() {
        let all = ids(&["a", "b", "c", "d", "e"]);
        let first = page(2, None).select(all.clone());
        assert_eq!(first.items, ids(&["a", "b"]));
        assert_eq!(first.next.as_deref(), Some("b"));
        let second = page(2, first.next.as_deref()).select(all.clone());
        assert_eq!(second.items, ids(&["c", "d"]));
        let last = page(2, second.next.as_deref()).select(all.clone());
        assert_eq!(last.items, ids(&["e"]));
        assert_eq!(last.next, None);
    }

    #[test]
    fn a_page_that_ends_exactly_has_no_next() {
        let p = page(2, Some("a")).select(ids(&["a", "b", "c"]));
        assert_eq!(p.items, ids(&["b", "c"]));
        assert_eq!(p.next, None);
        assert_eq!(
            page(3, Some("c")).select(ids(&["a", "b", "c"])).items.len(),
            0
        );
    }

    #[test]
    fn lookups_drop_missing_items_and_keep_next() {
        let p = page(3, None).select(ids(&["a", "b", "c", "d"]));
        let found: Page<String> = p
            .try_filter_map(|id| Ok::<_, ()>((id != "b").then(|| id.to_uppercase())))
            .expect("no error");
        assert_eq!(found.items, ids(&["A", "C"]));
        assert_eq!(found.next.as_deref(), Some("c"));
    }

    #[test]
    fn a_page_serializes_as_items_and_next() {
        let p = page(1, None).select(ids(&["a", "b"]));
        assert_eq!(
            serde_json::to_value(&p).expect("serializable"),
            serde_json::json!({ "items": ["a"], "next": "a" })
        );
    }
}
