//! Test guest: tries to open sockets of its own (TCP and UDP, IPv4) and to resolve a
//! name, and answers `200` with what the host allowed, as
//! `{"tcp": "...", "udp": "...", "lookup": "..."}` (`created` or the error code's name).
use microhost_guest::bindings::wasi::sockets::{
    instance_network, ip_name_lookup, network::IpAddressFamily, tcp_create_socket,
    udp_create_socket,
};
use microhost_guest::{Error, Request, Response, Service};

struct Socket;

impl Service for Socket {
    fn handle(_req: Request) -> Result<Response, Error> {
        let tcp = match tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(_) => "created".to_string(),
            Err(code) => code.name().to_string(),
        };
        let udp = match udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4) {
            Ok(_) => "created".to_string(),
            Err(code) => code.name().to_string(),
        };
        let network = instance_network::instance_network();
        let lookup = match ip_name_lookup::resolve_addresses(&network, "localhost") {
            Ok(_) => "created".to_string(),
            Err(code) => code.name().to_string(),
        };
        Ok(Response::json(
            200,
            &serde_json::json!({ "tcp": tcp, "udp": udp, "lookup": lookup }),
        ))
    }
}

microhost_guest::service!(Socket);
