//! Test guest: sleeps `?ms=N` milliseconds (default 200), then answers 200.
use microhost_guest::{Error, Request, Response, Service};

struct Slow;

impl Service for Slow {
    fn handle(req: Request) -> Result<Response, Error> {
        let ms: u64 = req
            .query_param("ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Ok(Response::json(200, &serde_json::json!({ "slept_ms": ms })))
    }
}

microhost_guest::service!(Slow);
