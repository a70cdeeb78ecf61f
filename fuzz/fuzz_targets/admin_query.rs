//! Admin query strings (and the path parameters beside them) on every admin endpoint
//! that takes a query, with the admin token, against a host serving `echo`: never a
//! panic, never a 5xx, and a problem body is JSON.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Endpoints with a query: method and path, `{}` the fuzzed name.
const ENDPOINTS: [(&str, &str); 6] = [
    ("POST", "/admin/services/{}/versions"),
    ("POST", "/admin/services/{}/activate"),
    ("POST", "/admin/services/{}/canary"),
    ("GET", "/admin/services/{}/history"),
    ("GET", "/admin/subscriptions/{}/order.created/dead-letters"),
    ("POST", "/admin/subscriptions/{}/order.created/replay"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (method, path) = ENDPOINTS[usize::from(which) % ENDPOINTS.len()];
    // `name?query`; no name is `echo`, the service the host serves.
    let (name, query) = match rest.iter().position(|&b| b == b'?') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&b""[..], rest),
    };
    let (Ok(name), Ok(query)) = (std::str::from_utf8(name), std::str::from_utf8(query)) else {
        return;
    };
    let name = if name.is_empty() { "echo" } else { name };
    let uri = format!("{}?{query}", path.replace("{}", name));
    // What hyper would refuse before the admin API sees it.
    let Ok(request) = http::Request::builder()
        .method(method)
        .uri(uri.as_str())
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", microhost_fuzz::ADMIN_TOKEN),
        )
        .body(Bytes::from_static(b"not a component"))
    else {
        return;
    };
    let response = microhost_fuzz::host().admin(request);
    let status = response.status();
    assert!(
        !status.is_server_error(),
        "{method} {uri}: {status} {:?}",
        String::from_utf8_lossy(response.body())
    );
    let problem = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct == "application/problem+json");
    if problem {
        let body: serde_json::Value =
            serde_json::from_slice(response.body()).expect("a problem body is JSON");
        assert_eq!(body["status"], status.as_u16(), "{body}");
    }
});
