//! The registry's router on any routes (well-formed prefixes, as the manifest admits)
//! and any path: it picks a route whose prefix matches the path in whole segments, the
//! longest one, and none only when no prefix matches.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Each route as its path segments (`[]` is `/`).
    routes: Vec<Vec<String>>,
    path: String,
}

/// Whether `prefix` covers `path` in whole segments (`/` covers every absolute path).
fn covers(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fuzz_target!(|input: Input| {
    let prefixes: Vec<String> = input
        .routes
        .iter()
        .map(|segments| {
            let segments: Vec<String> = segments
                .iter()
                .map(|s| s.replace('/', ""))
                .filter(|s| !s.is_empty())
                .collect();
            format!("/{}", segments.join("/"))
        })
        .collect();
    let routes = prefixes
        .iter()
        .enumerate()
        .map(|(i, prefix)| (prefix.clone(), format!("s{i}")))
        .collect();
    let longest = prefixes
        .iter()
        .filter(|p| covers(p, &input.path))
        .map(|p| p.len())
        .max();
    match (microhost::fuzzing::route(routes, &input.path), longest) {
        (None, None) => {}
        (Some(service), Some(longest)) => {
            let index: usize = service[1..].parse().expect("a service of the table");
            let prefix = &prefixes[index];
            assert!(
                covers(prefix, &input.path),
                "{prefix:?} does not cover {:?}",
                input.path
            );
            assert_eq!(prefix.len(), longest, "{prefix:?} is not the longest match");
        }
        (got, longest) => panic!(
            "routed {:?} to {got:?}; longest matching prefix: {longest:?} ({prefixes:?})",
            input.path
        ),
    }
});
