//! Test guest: every request panics, which traps the instance.
use microhost_guest::{Request, Response, Service};

struct Trap;

impl Service for Trap {
    fn handle(req: Request) -> Response {
        panic!("test-trap was asked for {}", req.path)
    }
}

microhost_guest::service!(Trap);
