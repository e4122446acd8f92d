//! Under Spin a response without Content-Length goes out chunked and stalls a keep-alive
//! client ~40 ms (the delayed ACK: see `stall`), so every route of the app answers with
//! Content-Length, its whole body in that many bytes, and keeps the connection open. How
//! fast is the bench's to measure (`bench --scenario keepalive`): a loaded machine moves it.

use crate::support;

use support::*;

const ADMIN: (&str, &str) = ("Authorization", "Bearer t0ken");
const JSON: (&str, &str) = ("Content-Type", "application/json");
/// Rounds over every route, on one connection.
const ROUNDS: usize = 3;

#[test]
fn every_route_answers_with_content_length_on_one_keep_alive_connection() {
    let redis = Redis::start();
    let variables = vec![
        ("admin_token".to_string(), "t0ken".to_string()),
        ("policies".to_string(), r#"{"kinds": {"default": ["1/1s"]}, "tiers": {"pro": {"default": ["2/1s"]}}}"#.into()),
    ];
    let host = Host::start(&redis, &HostOptions { variables, ..HostOptions::default() });
    let mut conn = KeepAlive::open(&host.addr).unwrap_or_else(|e| panic!("connecting to {}: {e}", host.addr));
    let mut answered = 0;
    let mut send = |method: &str, path: &str, headers: &[(&str, &str)], body: &str, expected: u16| {
        let what = format!("{method} {path} {body}");
        let reply = conn.send(method, path, headers, body.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.status, expected, "{what}: {}", reply.body);
        assert_eq!(reply.header("transfer-encoding"), None, "{what} went out chunked: {:?}", reply.headers);
        let length = reply.header("content-length").and_then(|l| l.parse::<usize>().ok());
        assert_eq!(length, Some(reply.body.len()), "{what}: Content-Length of {:?}", reply.headers);
        assert_ne!(reply.header("connection"), Some("close"), "{what} closed the connection");
        answered += 1;
        reply
    };

    let ran = send("POST", "/api/v1/task", &[JSON], r#"{"user_id":"ka"}"#, 200).json();
    let ran = ran["task_id"].as_str().map(str::to_string).unwrap_or_default();
    let queued = send("POST", "/api/v1/task", &[JSON], r#"{"user_id":"ka"}"#, 202).json();
    let queued = queued["task_id"].as_str().map(str::to_string).unwrap_or_default();
    for _ in 0..ROUNDS {
        send("POST", "/api/v1/task", &[JSON], r#"{"user_id":"ka"}"#, 202);
        send("POST", "/api/v1/task", &[JSON], "{}", 400);
        send("GET", &format!("/api/v1/task/{ran}"), &[], "", 200);
        // Cancelling a queued task again answers as the first time did.
        send("DELETE", &format!("/api/v1/task/{queued}"), &[], "", 200);
        send("DELETE", "/api/v1/task", &[], "", 405);
        send("PUT", "/api/v1/users/ka/tier", &[JSON, ADMIN], r#"{"tier":"pro"}"#, 200);
        send("GET", "/api/v1/users/ka", &[ADMIN], "", 200);
        let key = send("POST", "/api/v1/keys", &[JSON, ADMIN], r#"{"user_id":"ka"}"#, 201).json();
        let key = key["key_id"].as_str().map(str::to_string).unwrap_or_default();
        send("GET", "/api/v1/keys?user_id=ka", &[ADMIN], "", 200);
        send("DELETE", &format!("/api/v1/keys/{key}"), &[ADMIN], "", 200);
        send("GET", "/api/v1/log", &[ADMIN], "", 200);
        send("GET", "/api/v1/overview?user_id=ka", &[ADMIN], "", 200);
        send("GET", "/metrics", &[ADMIN], "", 200);
        send("GET", "/healthz", &[], "", 200);
        send("GET", "/", &[], "", 200);
        send("GET", "/api/v1/openapi.json", &[], "", 200);
        send("GET", "/api/v1/nope", &[], "", 404);
    }
    assert_eq!(answered, 2 + ROUNDS * 17);
}
