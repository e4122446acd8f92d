//! The do-nothing fixture's two framings, which the benchmark's keep-alive scenario compares
//! (`bench --scenario keepalive`): the host, like Spin, sets no TCP_NODELAY on accepted
//! sockets and streams the guest's body, so on one keep-alive connection a response without
//! Content-Length goes out chunked and its last write waits for the client's delayed ACK
//! (~40 ms on Linux), while one with Content-Length leaves in one write. How long each takes
//! is the bench's to measure (a loaded machine moves it); here, what cannot flake: each
//! route keeps its framing and one connection carries both, request after request.

use crate::support;

use support::*;

const ROUNDS: usize = 10;

#[test]
fn one_keep_alive_connection_carries_the_fixture_s_content_length_and_chunked_answers() {
    let host = Host::start_manifest(&noop_manifest());
    let mut conn = KeepAlive::open(&host.addr).unwrap_or_else(|e| panic!("connecting to {}: {e}", host.addr));
    for round in 0..ROUNDS {
        let sized = conn.get("/").unwrap_or_else(|e| panic!("GET / in round {round}: {e}"));
        assert_eq!((sized.status, sized.body.as_str()), (200, "ok\n"), "GET / in round {round}");
        assert_eq!(sized.header("content-length"), Some("3"), "GET /: {:?}", sized.headers);
        assert_eq!(sized.header("transfer-encoding"), None, "GET /: {:?}", sized.headers);

        let chunked = conn.get("/chunked").unwrap_or_else(|e| panic!("GET /chunked in round {round}: {e}"));
        assert_eq!((chunked.status, chunked.body.as_str()), (200, "ok\n"), "GET /chunked in round {round}");
        assert_eq!(chunked.header("transfer-encoding"), Some("chunked"), "GET /chunked: {:?}", chunked.headers);
        assert_eq!(chunked.header("content-length"), None, "GET /chunked: {:?}", chunked.headers);
    }
}
