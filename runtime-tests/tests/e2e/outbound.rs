//! The host's outbound HTTP, through a guest that sends what its caller describes
//! (`fixtures/outbound`): `allowed_outbound_hosts` gate requests (an empty template entry is
//! skipped), one client pool keeps connections alive across requests, redirects are not
//! followed, and a guest-set first-byte timeout fires with Spin's error.

use crate::support;

use runtime_tests::backend::Backend;
use std::collections::HashSet;
use std::time::Duration;
use support::*;

/// What the fixture reports for a request to `target`: `status <code>` or `error <ErrorCode>`.
fn send(host: &Host, target: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("x-target", target)];
    headers.extend_from_slice(extra);
    let reply = request(&host.addr, "GET", "/", &headers, b"");
    assert_eq!(reply.status, 200, "the fixture failed: {}\nstderr:\n{}", reply.body, host.stderr_text());
    reply
}

#[test]
fn without_an_allowed_host_the_request_is_refused_and_logged() {
    let backend = Backend::start();
    // `target_hosts` is empty: its entry is skipped, not an error, and nothing is allowed.
    let host = Host::start_manifest(&outbound_manifest());
    let reply = send(&host, &backend.url("/ok"), &[]);
    assert_eq!(reply.body, "error ErrorCode::HttpRequestDenied");
    let pattern = format!("http://{}", backend.addr());
    wait_until(
        Duration::from_secs(5),
        || format!("the host logs the refusal of {pattern}:\n{}", host.stderr_text()),
        || host.stderr_text().contains(&format!("Outbound network destination not allowed: {pattern}")),
    );
    assert!(backend.requests().is_empty(), "a refused request reached the backend");
}

#[test]
fn an_allowed_host_is_reached_over_one_kept_alive_connection() {
    let backend = Backend::start();
    let allowed = format!("http://{}", backend.addr());
    let host = Host::start_manifest_with(&outbound_manifest(), &[("target_hosts", &allowed)]);
    for _ in 0..5 {
        assert_eq!(send(&host, &backend.url("/ok"), &[]).body, "status 200");
    }
    // Redirects reach the guest as they are.
    assert_eq!(send(&host, &backend.url("/status/302"), &[]).body, "status 302");
    let recorded = backend.wait_for(6, Duration::from_secs(5));
    assert_eq!(recorded.len(), 6);
    assert!(recorded.iter().all(|r| r.method == "POST" && r.body == b"payload"), "{recorded:?}");
    let host_header = backend.addr().to_string();
    assert_eq!(recorded[0].header("host"), Some(host_header.as_str()));
    let connections = recorded.iter().map(|r| r.peer).collect::<HashSet<_>>();
    assert_eq!(connections.len(), 1, "six sequential requests came over {connections:?}");

    // The same address by another name is another host.
    let other_name = backend.url("/ok").replace("127.0.0.1", "localhost");
    assert_eq!(send(&host, &other_name, &[]).body, "error ErrorCode::HttpRequestDenied");
}

#[test]
fn a_first_byte_timeout_set_by_the_guest_fires_with_connection_read_timeout() {
    let backend = Backend::start();
    let allowed = format!("http://{}", backend.addr());
    let host = Host::start_manifest_with(&outbound_manifest(), &[("target_hosts", &allowed)]);
    let reply = send(&host, &backend.url("/slow/3000"), &[("x-first-byte-ms", "300")]);
    assert_eq!(reply.body, "error ErrorCode::ConnectionReadTimeout");
    assert!(
        reply.elapsed >= Duration::from_millis(300) && reply.elapsed < Duration::from_millis(2000),
        "answered after {:?}",
        reply.elapsed
    );
}

#[test]
fn a_port_nobody_listens_on_is_connection_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let host = Host::start_manifest_with(&outbound_manifest(), &[("target_hosts", "http://127.0.0.1:*")]);
    let reply = send(&host, &format!("http://{closed}/ok"), &[]);
    assert_eq!(reply.body, "error ErrorCode::ConnectionRefused");
}

/// https goes through rustls: a plain-HTTP server fails the handshake with Spin's error.
#[test]
fn https_to_a_server_without_tls_is_a_tls_protocol_error() {
    let backend = Backend::start();
    let host = Host::start_manifest_with(&outbound_manifest(), &[("target_hosts", "https://127.0.0.1:*")]);
    let reply = send(&host, &format!("https://{}/ok", backend.addr()), &[]);
    assert_eq!(reply.body, "error ErrorCode::TlsProtocolError");
}
