//! Under Spin a response without Content-Length stalls a keep-alive client ~40 ms (see
//! tests/stall.rs): every route of the app must answer one keep-alive connection fast.

use crate::support;

use std::time::Duration;
use support::*;

#[test]
fn fifty_sequential_requests_on_one_keep_alive_connection_answer_fast() {
    let redis = Redis::start();
    let host = Host::start(&redis, &HostOptions::default());
    let mut conn = KeepAlive::open(&host.addr).unwrap_or_else(|e| panic!("connecting to {}: {e}", host.addr));
    let first = conn.post_task("keepalive-first").unwrap_or_else(|e| panic!("POST: {e}"));
    assert_eq!(first.status, 200, "{}", first.body);
    let task = first.json()["task_id"].as_str().map(str::to_string).unwrap_or_default();
    let task_path = format!("/api/v1/task/{task}");

    let mut slow = Vec::new();
    let mut elapsed = Vec::new();
    for i in 0..50 {
        let (what, expected, reply) = match i % 5 {
            0 => ("POST /api/v1/task", 200, conn.post_task(&format!("keepalive-{i}"))),
            1 => ("GET /healthz", 200, conn.get("/healthz")),
            2 => ("GET /api/v1/task/{id}", 200, conn.get(&task_path)),
            3 => ("GET /api/v1/nope", 404, conn.get("/api/v1/nope")),
            _ => (
                "POST /api/v1/task {}",
                400,
                conn.send("POST", "/api/v1/task", &[("Content-Type", "application/json")], b"{}"),
            ),
        };
        let reply = reply.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.status, expected, "{what}: {}", reply.body);
        if reply.elapsed >= Duration::from_millis(35) {
            slow.push(format!(
                "{what}: {:?} (content-length {:?}, transfer-encoding {:?})",
                reply.elapsed,
                reply.header("content-length"),
                reply.header("transfer-encoding")
            ));
        }
        elapsed.push(reply.elapsed);
    }
    let median = percentile_ms(&mut elapsed, 50.0);
    eprintln!(
        "50 requests on one keep-alive connection: median {median:.2} ms, {} at 35 ms or more:\n{}",
        slow.len(),
        slow.join("\n")
    );
    // A stall costs every response 40 ms or more; a loaded machine slows a few, not most.
    assert!(median < 20.0 && slow.len() <= 5, "median {median:.2} ms; slow answers:\n{}", slow.join("\n"));
}
