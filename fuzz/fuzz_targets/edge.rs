//! The HTTP edge: any bytes a client may send on one connection, through hyper (with
//! the gateway server's settings) into the real gateway and the `echo` service behind
//! it. Never a panic nor a hang, no 500 of the host's own (a host fault), and what
//! comes back over HTTP/1 is well-formed responses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let exchange = microhost_fuzz::host().edge(data);
    microhost_fuzz::show(&exchange);
    if data.starts_with(microhost_fuzz::H2_PREFACE) {
        // HTTP/2 frames: hyper's h2 checks them; the handler's invariants are the same.
        return;
    }
    for answer in microhost_fuzz::check_http1(&exchange) {
        // The echo service answers any status it is asked for (`?status=500`, or a 500
        // of its own for an invalid one): only a 500 of the host's is a fault.
        assert!(
            !answer.is_host_fault(),
            "a 500 (host fault): {answer:?} in {:?}",
            String::from_utf8_lossy(&exchange.output)
        );
    }
});
