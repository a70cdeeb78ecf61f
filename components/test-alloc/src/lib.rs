//! Test guest: every request allocates (and touches) memory until it runs out.
use microhost_guest::{Error, Request, Response, Service};

struct Alloc;

impl Service for Alloc {
    fn handle(_req: Request) -> Result<Response, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

microhost_guest::service!(Alloc);
