//! Path and header rewrites between the edge and a service (`[service.policy.transform]`).

use crate::config::{HeaderOps, TransformSpec};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// The path the service sees: `strip_prefix` removed (whole segments only), then
/// `add_prefix` put in front; the query is kept.
pub(crate) fn rewrite_uri(spec: &TransformSpec, uri: &Uri) -> Uri {
    if spec.strip_prefix.is_none() && spec.add_prefix.is_none() {
        return uri.clone();
    }
    let path = uri.path();
    let mut rewritten = match &spec.strip_prefix {
        Some(prefix) => match path.strip_prefix(prefix.as_str()) {
            Some("") => "/".to_string(),
            Some(rest) if rest.starts_with('/') => rest.to_string(),
            _ => path.to_string(),
        },
        None => path.to_string(),
    };
    if let Some(prefix) = &spec.add_prefix {
        rewritten = if rewritten == "/" {
            prefix.clone()
        } else {
            format!("{prefix}{rewritten}")
        };
    }
    if let Some(query) = uri.query() {
        rewritten = format!("{rewritten}?{query}");
    }
    let mut parts = uri.clone().into_parts();
    match rewritten.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return uri.clone(),
    }
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Removes, then sets, the configured headers.
pub(crate) fn apply_headers(ops: &HeaderOps, headers: &mut HeaderMap) {
    for name in &ops.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for (name, value) in &ops.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(strip: Option<&str>, add: Option<&str>) -> TransformSpec {
        TransformSpec {
            strip_prefix: strip.map(String::from),
            add_prefix: add.map(String::from),
            ..TransformSpec::default()
        }
    }

    #[test]
    fn prefixes_are_rewritten_by_whole_segments() {
        let uri: Uri = "/api/v1/items?x=1".parse().expect("uri");
        let s = spec(Some("/api/v1"), Some("/internal"));
        assert_eq!(rewrite_uri(&s, &uri).to_string(), "/internal/items?x=1");
        let s = spec(Some("/api"), None);
        assert_eq!(
            rewrite_uri(&s, &"/apix".parse().expect("uri")).to_string(),
            "/apix"
        );
        assert_eq!(
            rewrite_uri(&s, &"/api".parse().expect("uri")).to_string(),
            "/"
        );
    }
}
