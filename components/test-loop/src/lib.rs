//! Test guest: every request spins forever; only the host's CPU deadline ends it.
use microhost_guest::{Error, Request, Response, Service};

struct Loop;

impl Service for Loop {
    fn handle(_req: Request) -> Result<Response, Error> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

microhost_guest::service!(Loop);
