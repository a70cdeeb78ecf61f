//! Test guest whose health can be switched off for a while.
//! `GET /...` answers 200 `ok`; `PUT .../sick?ms=N` makes `health()` fail for N ms (the
//! deadline is kept in the key-value store); `DELETE .../sick` makes it healthy again.
use microhost_guest::kv::Store;
use microhost_guest::{Error, Request, Response, Service};

struct Health;

const SICK_UNTIL: &str = "sick-until";

impl Service for Health {
    fn handle(req: Request) -> Result<Response, Error> {
        let store = Store::open()?;
        let sick = req.path.ends_with("/sick");
        match req.method.as_str() {
            "PUT" if sick => {
                let ms: u64 = req
                    .query_param("ms")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(60_000);
                store.set_json(SICK_UNTIL, &(microhost_guest::now_ms() + ms))?;
            }
            "DELETE" if sick => store.delete(SICK_UNTIL)?,
            _ => return Ok(Response::text(200, "ok")),
        }
        Ok(Response::new(204))
    }

    fn health() -> Result<(), Error> {
        let until: Option<u64> = Store::open()?.get_json(SICK_UNTIL)?;
        match until {
            Some(until) if until > microhost_guest::now_ms() => {
                Err(format!("sick for another {} ms", until - microhost_guest::now_ms()).into())
            }
            _ => Ok(()),
        }
    }
}

microhost_guest::service!(Health);
