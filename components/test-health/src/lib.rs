//! Test guest whose health can be switched off for a while.
//! `GET /...` answers 200 `ok`; `PUT .../sick?ms=N` makes `health()` fail for N ms (the
//! deadline is kept in the key-value store); `DELETE .../sick` makes it healthy again.
use microhost_guest::{Request, Response, Service, kv};

struct Health;

const SICK_UNTIL: &str = "sick-until";

impl Service for Health {
    fn handle(req: Request) -> Response {
        let bucket = match kv::open() {
            Ok(b) => b,
            Err(e) => return Response::internal_error(&e),
        };
        let sick = req.path.ends_with("/sick");
        let written = match req.method.as_str() {
            "PUT" if sick => {
                let ms: u64 = req
                    .query_param("ms")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(60_000);
                kv::set_json(&bucket, SICK_UNTIL, &(microhost_guest::now_ms() + ms))
            }
            "DELETE" if sick => bucket.delete(SICK_UNTIL).map_err(kv::describe),
            _ => return Response::text(200, "ok"),
        };
        match written {
            Ok(()) => Response::new(204),
            Err(e) => Response::internal_error(&e),
        }
    }

    fn health() -> Result<(), String> {
        let bucket = kv::open()?;
        let until: Option<u64> = kv::get_json(&bucket, SICK_UNTIL)?;
        match until {
            Some(until) if until > microhost_guest::now_ms() => Err(format!(
                "sick for another {} ms",
                until - microhost_guest::now_ms()
            )),
            _ => Ok(()),
        }
    }
}

microhost_guest::service!(Health);
