//! Longest-prefix routing from request paths to service names. Pure: knows nothing of
//! services beyond their names and route prefixes.

/// Routes, longest prefix first.
#[derive(Debug, Clone, Default)]
pub(super) struct Router {
    routes: Vec<(String, String)>,
}

impl Router {
    /// Builds a router from `(prefix, service)` pairs. Prefixes are whole path segments
    /// (`/api/products` matches `/api/products` and `/api/products/7`, not
    /// `/api/productsx`); `/` matches everything.
    pub(super) fn new(routes: impl IntoIterator<Item = (String, String)>) -> Router {
        let mut routes: Vec<(String, String)> = routes.into_iter().collect();
        routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Router { routes }
    }

    /// The service whose prefix is the longest match for `path`.
    pub(super) fn route(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(prefix, _)| matches_prefix(prefix, path))
            .map(|(_, service)| service.as_str())
    }
}

fn matches_prefix(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new([
            ("/api".to_string(), "api".to_string()),
            ("/api/products".to_string(), "product".to_string()),
            ("/api/products/special".to_string(), "special".to_string()),
        ])
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router();
        assert_eq!(r.route("/api/products"), Some("product"));
        assert_eq!(r.route("/api/products/42"), Some("product"));
        assert_eq!(r.route("/api/products/special/1"), Some("special"));
        assert_eq!(r.route("/api/orders"), Some("api"));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let r = router();
        assert_eq!(r.route("/api/productsx"), Some("api"));
        assert_eq!(r.route("/apix"), None);
        assert_eq!(r.route("/"), None);
        assert_eq!(r.route("/other"), None);
    }

    #[test]
    fn root_route_catches_the_rest() {
        let r = Router::new([
            ("/".to_string(), "root".to_string()),
            ("/api".to_string(), "api".to_string()),
        ]);
        assert_eq!(r.route("/anything/here"), Some("root"));
        assert_eq!(r.route("/api/x"), Some("api"));
    }
}
