//! Hello world in the plain `wasi:http/proxy` world, without the microhost guest
//! helper: the component any `wasi:http` host runs (`wasmtime serve`, Spin,
//! `microhost serve --component`). It exports only the HTTP handler, so it is also the
//! test case for the contract gate (it cannot serve a subscription).

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasi:http/proxy@0.2.12",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

impl Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::new();
        // Building fresh fields cannot fail for a valid, unforbidden header.
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(b"Hello, world!\n");
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

export!(Hello);
