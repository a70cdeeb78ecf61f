//! The HTTP edge: any bytes a client may send on one connection, through hyper (with
//! the gateway server's settings) into the real gateway and the `echo` service behind
//! it. Never a panic nor a hang, no 500 (a host fault), and what comes back over
//! HTTP/1 is well-formed responses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let exchange = microhost_fuzz::host().edge(data);
    microhost_fuzz::show(&exchange);
    if data.starts_with(microhost_fuzz::H2_PREFACE) {
        // HTTP/2 frames: hyper's h2 checks them; the handler's invariants are the same.
        return;
    }
    microhost_fuzz::check_http1(&exchange);
    assert!(
        !exchange.output.windows(13).any(|w| w == b"HTTP/1.1 500 "),
        "a 500 (host fault): {:?}",
        String::from_utf8_lossy(&exchange.output)
    );
});
