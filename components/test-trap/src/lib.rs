//! Test guest: every request panics, which traps the instance.
use microhost_guest::{Error, Request, Response, Service};

struct Trap;

impl Service for Trap {
    fn handle(req: Request) -> Result<Response, Error> {
        panic!("test-trap was asked for {}", req.path)
    }
}

microhost_guest::service!(Trap);
