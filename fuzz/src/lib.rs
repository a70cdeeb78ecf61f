//! What the fuzz targets share: the fuzzed host's manifest and keys, the host itself
//! (built once per process), and the check that a connection's answers are well-formed
//! HTTP/1.

use microhost::config::Manifest;
use microhost::fuzzing::{Exchange, Host};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The host's HS256 signing secret (it guards nothing).
pub const JWT_SECRET: &str = "fuzzing-host-secret-guards-nothing-0123456789";

/// The HS512 secret of the `oct` key in `keys/jwks.json`.
pub const OCT_SECRET: &[u8] = b"fuzzing-oct-secret-guards-nothing-0123456789abcdef";

/// The admin API's bearer token.
pub const ADMIN_TOKEN: &str = "fuzzing-admin-token";

/// The fuzzed host: one service, `echo` (the test-echo component) on `/api`, protected
/// but for `GET /api/public/*`, with CORS and a transform, allowed to call itself, and
/// a breaker that does not open (an open breaker would make the answer to an input
/// depend on the inputs before it). Tokens verify with the host key, an RS256 key of
/// another issuer (`rsa`) and an HS512 JWKS key (`oct`).
const MANIFEST: &str = r#"
[auth]
issuer = "microhost"
audience = "microhost"
leeway_secs = 30
jwks = "keys/jwks.json"
jwks_issuer = "https://idp.example"

[[auth.key]]
kid = "rsa"
alg = "RS256"
public_key = "../host/tests/fixtures/jwt-rsa-public.pem"
issuer = "https://partner.example"

[[service]]
name = "echo"
route = "/api"
component = { path = "../components/target/wasm32-wasip2/release/test_echo.wasm", version = "0.1.0" }
limits = { memory_mib = 16, timeout_ms = 2000, max_body_kib = 16 }
config = { greeting = "fuzz" }
protected = true
public = ["GET /api/public/*"]
calls = ["echo"]
breaker = { failures = 1000000, open_ms = 1 }

[service.policy]
cors = { allow_origins = ["https://shop.example"], allow_credentials = true }
transform = { strip_prefix = "/api", request_headers = { set = { "x-env" = "fuzz" }, remove = ["x-debug"] }, response_headers = { set = { "x-frame-options" = "DENY" } } }
"#;

/// The fuzz crate's directory: the manifest's paths are relative to it.
pub fn base_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// [`MANIFEST`], parsed and validated.
pub fn manifest() -> Manifest {
    let base = base_dir();
    Manifest::from_toml(MANIFEST, &base.join("fuzz.toml"), base.clone())
        .expect("the fuzzing manifest is valid")
}

/// The host, started on the first call (state in a fresh directory under the system's
/// temporary directory, which `just fuzz` points into fuzz/target/).
pub fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let manifest = manifest();
        for service in &manifest.services {
            let wasm = manifest.component_path(service);
            assert!(
                wasm.exists(),
                "{wasm:?} is missing: run `just build-components` first"
            );
        }
        let data = std::env::temp_dir().join(format!("microhost-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let cache = base_dir().join("target/wasm-cache");
        Host::start(&manifest, &data, &cache, JWT_SECRET, ADMIN_TOKEN)
            .expect("the fuzzed host starts")
    })
}

/// With `MICROHOST_FUZZ_SHOW` set, prints what a connection exchanged (for reading
/// what an input does: `MICROHOST_FUZZ_SHOW=1 fuzz/target/.../edge INPUT`).
pub fn show(exchange: &Exchange) {
    static SHOW: OnceLock<bool> = OnceLock::new();
    if *SHOW.get_or_init(|| std::env::var_os("MICROHOST_FUZZ_SHOW").is_some()) {
        eprintln!(
            "served {:?}\n{}",
            exchange.served,
            String::from_utf8_lossy(&exchange.output)
        );
    }
}

/// The start of an HTTP/2 connection (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One response read back from a connection.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Its `x-microhost-service` tag: a service's answer, or the host's on its behalf.
    pub service: Option<String>,
    /// Its problem body, if it is `application/problem+json`.
    pub problem: Option<serde_json::Value>,
}

impl Answer {
    /// Whether the host itself failed (a 500 the service did not write): any 500 but a
    /// service's own answer, which carries the service tag and no problem naming a
    /// `service` (the host adds that member to the problems it writes for a service).
    pub fn is_host_fault(&self) -> bool {
        self.status == 500
            && (self.service.is_none()
                || self
                    .problem
                    .as_ref()
                    .is_some_and(|problem| problem.get("service").is_some()))
    }
}

/// Panics unless what the server wrote is a sequence of well-formed HTTP/1 responses:
/// each head parses, framing (Content-Length or chunked) is unambiguous and fits what
/// was sent, each answer of the gateway's handler carries `x-request-id`, and a problem
/// body is a JSON object whose `status` is the response's. Returns the responses.
pub fn check_http1(exchange: &Exchange) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut rest = exchange.output.as_slice();
    let mut answered = 0;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut head = httparse::Response::new(&mut headers);
        let len = match head.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "response {answered}: not an HTTP/1 response head ({other:?}): {:?}",
                String::from_utf8_lossy(rest)
            ),
        };
        let status = head.code.expect("a complete head has a status");
        assert!((100..600).contains(&status), "status {status}");
        let header = |name: &str| {
            head.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).expect("header values are ASCII here"))
                .collect::<Vec<_>>()
        };
        let by_handler = answered < exchange.served.len();
        let is_head = by_handler && exchange.served[answered] == http::Method::HEAD;
        let lengths = header("content-length");
        let chunked = header("transfer-encoding")
            .iter()
            .any(|te| te.to_ascii_lowercase().contains("chunked"));
        assert!(lengths.len() <= 1, "several Content-Length: {lengths:?}");
        assert!(
            !(chunked && !lengths.is_empty()),
            "both Content-Length and chunked"
        );
        let body_start = &rest[len..];
        let (body, after) = if status < 200 || status == 204 || status == 304 || is_head {
            (&body_start[..0], body_start)
        } else if chunked {
            dechunk(body_start)
        } else if let Some(length) = lengths.first() {
            let length: usize = length.parse().expect("Content-Length is a number");
            assert!(
                length <= body_start.len(),
                "Content-Length {length} but {} bytes follow",
                body_start.len()
            );
            body_start.split_at(length)
        } else {
            // Delimited by the end of the connection.
            (body_start, &body_start[body_start.len()..])
        };
        let mut problem = None;
        if status >= 200 && by_handler {
            assert!(
                !header("x-request-id").is_empty(),
                "the gateway's answer {status} has no x-request-id"
            );
            if header("content-type") == ["application/problem+json"] && !is_head {
                let body: serde_json::Value =
                    serde_json::from_slice(body).expect("a problem body is JSON");
                assert_eq!(
                    body["status"],
                    u64::from(status),
                    "problem body {body} of a {status}"
                );
                problem = Some(body);
            }
        }
        if status >= 200 {
            answered += 1;
            answers.push(Answer {
                status,
                service: header("x-microhost-service").first().map(|s| s.to_string()),
                problem,
            });
        }
        rest = after;
    }
    answers
}

/// Splits a chunked body from what follows it; panics if it is not well-formed.
fn dechunk(mut rest: &[u8]) -> (&[u8], &[u8]) {
    let start = rest;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line ends in CRLF");
        let size_text = std::str::from_utf8(&rest[..line_end]).expect("chunk size is ASCII");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size is hex");
        rest = &rest[line_end + 2..];
        if size == 0 {
            // No trailers from this server: the final CRLF.
            assert!(rest.starts_with(b"\r\n"), "chunked body ends in CRLF");
            rest = &rest[2..];
            let body_len = start.len() - rest.len();
            return (&start[..body_len], rest);
        }
        assert!(rest.len() >= size + 2, "chunk of {size} bytes is cut off");
        assert_eq!(&rest[size..size + 2], b"\r\n", "chunk data ends in CRLF");
        rest = &rest[size + 2..];
    }
}
