//! The host stalls where Spin stalls (SPIN-NOTES, "What the real Spin costs per request"):
//! it sets no TCP_NODELAY on accepted sockets and streams the guest's body, so on one
//! keep-alive connection a response without Content-Length goes out chunked, its last write
//! waits for the client's delayed ACK, and each request takes ~40 ms; with Content-Length
//! the same tiny response goes out in one write and takes about a millisecond.

use crate::support;

use std::time::Duration;
use support::*;

const REQUESTS: usize = 30;

/// The elapsed times of `REQUESTS` sequential GETs of `path` on `conn`.
fn times(conn: &mut KeepAlive, path: &str) -> Vec<Duration> {
    (0..REQUESTS)
        .map(|_| {
            let reply = conn.get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"), "GET {path}");
            reply.elapsed
        })
        .collect()
}

#[test]
fn a_chunked_response_stalls_a_keep_alive_connection_and_one_with_content_length_does_not() {
    let host = Host::start_manifest(&noop_manifest());
    let mut conn = KeepAlive::open(&host.addr).unwrap_or_else(|e| panic!("connecting to {}: {e}", host.addr));

    let sized = conn.get("/").unwrap_or_else(|e| panic!("GET /: {e}"));
    assert_eq!(sized.header("content-length"), Some("3"));
    let chunked = conn.get("/chunked").unwrap_or_else(|e| panic!("GET /chunked: {e}"));
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.header("content-length"), None);

    // Interleaved rounds, so that a burst of load on the machine hits both alike.
    let (mut with_length, mut without) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        with_length.extend(times(&mut conn, "/"));
        without.extend(times(&mut conn, "/chunked"));
    }
    let with_length_ms = percentile_ms(&mut with_length, 50.0);
    let chunked_ms = percentile_ms(&mut without, 50.0);
    eprintln!(
        "one keep-alive connection, median of {} requests: Content-Length {with_length_ms:.2} ms, chunked {chunked_ms:.2} ms",
        2 * REQUESTS
    );
    // Linux delays an ACK 40 ms at least (up to 200 ms); a loaded 2-core machine adds a few
    // ms to the fast case, never tens.
    assert!(chunked_ms >= 30.0, "no stall for a chunked response: median {chunked_ms:.2} ms");
    assert!(with_length_ms < 15.0, "a response with Content-Length stalled: median {with_length_ms:.2} ms");
}
