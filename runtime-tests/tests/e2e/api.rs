//! The API end to end (docs/api.md): one test per behaviour of the status table, against a real
//! redis-server and the real app in `spin-host`, over loopback HTTP.

use crate::support;

use std::time::Duration;
use support::{Host, HostOptions, Redis, app_key, request};
use task_core::keys::word;

/// The two policies of draft-ietf-httpapi-ratelimit-headers-11 with the default limits.
const POLICY: [(&str, [(&str, i64); 2]); 2] = [("burst", [("q", 1), ("w", 1)]), ("minute", [("q", 20), ("w", 60)])];

/// A rate-limit field of draft-ietf-httpapi-ratelimit-headers-11, read with a Structured
/// Field parser (RFC 9651): it must be a List of Items, each a String (the quoted policy
/// name) whose parameters are Integers. Returns (policy, [(parameter, value)]) in order.
fn structured(reply: &support::Reply, field: &str) -> Vec<(String, Vec<(String, i64)>)> {
    let value = reply.header(field).unwrap_or_else(|| panic!("no {field} field in {:?}", reply.headers));
    let list: sfv::List =
        sfv::Parser::new(value).parse().unwrap_or_else(|e| panic!("{field}: {value:?} is not a structured List: {e}"));
    list.iter()
        .map(|entry| {
            let sfv::ListEntry::Item(item) = entry else { panic!("{field}: {value:?} holds an inner list") };
            let name =
                item.bare_item.as_string().unwrap_or_else(|| panic!("{field}: policy name not a String in {value:?}"));
            let params = item
                .params
                .iter()
                .map(|(key, v)| {
                    let n = v.as_integer().unwrap_or_else(|| panic!("{field}: {key:?} is not an Integer in {value:?}"));
                    (key.as_str().to_string(), i64::from(n))
                })
                .collect();
            (name.as_str().to_string(), params)
        })
        .collect()
}

/// `RateLimit-Policy` checked against the default policies; the `RateLimit` field parsed.
fn rate_limit(reply: &support::Reply) -> Vec<(String, Vec<(String, i64)>)> {
    let policy: Vec<_> = POLICY
        .iter()
        .map(|(n, ps)| (n.to_string(), ps.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Vec<_>>()))
        .collect();
    assert_eq!(structured(reply, "ratelimit-policy"), policy);
    structured(reply, "ratelimit")
}

/// A `RateLimit` value as `rate_limit` returns it, from literals.
fn limits(windows: &[(&str, &[(&str, i64)])]) -> Vec<(String, Vec<(String, i64)>)> {
    windows.iter().map(|(n, ps)| (n.to_string(), ps.iter().map(|(k, v)| (k.to_string(), *v)).collect())).collect()
}

/// Every key in Redis but the metrics counters (which count bad requests too).
fn state_keys(redis: &Redis) -> Vec<String> {
    let keys: Vec<String> = redis.query(&["KEYS", "*"]);
    keys.into_iter().filter(|k| *k != app_key(word::METRICS)).collect()
}

fn start() -> (Redis, Host) {
    let redis = Redis::start();
    let host = Host::start(&redis, &HostOptions::default());
    (redis, host)
}

/// The seed's `curl -X POST -H "Content-Type: application/json" -d '{"user_id":"123"}'`: the
/// task runs inline, the answer says so, and the log line appears on stdout and in the log.
#[test]
fn the_seed_curl_runs_the_task_inline_and_logs_it() {
    let (_redis, host) = start();
    let reply = host.post_task(r#"{"user_id":"123"}"#);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    // The first task of the user used the one unit of the 1-second window (back in 1 s) and
    // one of the minute's 20 (back in 60 s).
    assert_eq!(rate_limit(&reply), limits(&[("burst", &[("r", 0), ("t", 1)]), ("minute", &[("r", 19), ("t", 60)])]));
    let body = reply.json();
    assert_eq!(body["status"], "completed");
    assert_eq!(body["user_id"], "123");
    let slot = body["slot"].as_i64().unwrap_or(-1);
    let completed_at = body["completed_at"].as_i64().unwrap_or(-1);
    assert!(completed_at >= slot && slot > 0, "slot {slot} completed_at {completed_at}");

    let line = format!("123-task completed at-{completed_at}");
    let seen = host.wait_for_lines(1, Duration::from_secs(10), |l| l == line);
    assert_eq!(seen, 1, "stdout lacks {line:?}");
    let log = host.get("/api/v1/log");
    assert_eq!(log.status, 200);
    assert_eq!(log.body, format!("{line}\n"));

    let task_id = body["task_id"].as_str().unwrap_or_default();
    let status = host.get(&format!("/api/v1/task/{task_id}")).json();
    assert_eq!(status["status"], "completed");
    assert_eq!(status["completed_at"], completed_at);
}

/// A second task within the same second is queued for exactly one second after the first,
/// answered 202 with where to look and when, and then runs at that slot, not before.
#[test]
fn a_second_task_within_the_second_is_queued_and_runs_at_its_slot() {
    let (_redis, host) = start();
    let first = host.post_task(r#"{"user_id":"alice"}"#).json();
    let reply = host.post_task(r#"{"user_id":"alice"}"#);
    assert_eq!(reply.status, 202, "{}", reply.body);
    let second = reply.json();
    let slot = second["slot"].as_i64().unwrap_or(-1);
    assert_eq!(slot, first["slot"].as_i64().unwrap_or(-2) + 1_000);
    assert_eq!(second["status"], "queued");
    assert_eq!(second["queue_position"], 1);
    let task_id = second["task_id"].as_str().unwrap_or_default().to_string();
    let location = format!("/api/v1/task/{task_id}");
    assert_eq!(reply.header("location"), Some(location.as_str()));
    assert_eq!(reply.header("retry-after"), Some("1"));
    // Two slots in the next second's windows now: the burst window frees a unit once the
    // second slot has left it (2 s); the minute's first unit comes back in 60 s.
    assert_eq!(rate_limit(&reply), limits(&[("burst", &[("r", 0), ("t", 2)]), ("minute", &[("r", 18), ("t", 60)])]));
    assert_eq!(host.get(&location).json()["status"], "queued");

    // Wait for the drainer to run it: its line appears on stdout.
    let seen = host.wait_for_lines(2, Duration::from_secs(10), |l| l.starts_with("alice-task completed at-"));
    assert_eq!(seen, 2, "stderr:\n{}", host.stderr_text());
    let done = host.get(&location).json();
    assert_eq!(done["status"], "completed");
    let completed_at = done["completed_at"].as_i64().unwrap_or(-1);
    assert!(completed_at >= slot, "ran at {completed_at}, before its slot {slot}");
    assert!(completed_at - slot < 1_000, "ran {} ms late", completed_at - slot);
}

/// Every kind of bad input gets its 4xx as an RFC 9457 problem, and nothing is
/// written to Redis.
#[test]
fn every_bad_input_gets_a_problem_and_stores_nothing() {
    /// (method, path, headers, body, the status expected).
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, String, u16);
    let (redis, host) = start();
    let json = [("Content-Type", "application/json")];
    let long_id = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129));
    let big = format!(r#"{{"user_id":"a","pad":"{}"}}"#, "x".repeat(5_000));
    let cases: Vec<Case> = vec![
        ("POST", "/api/v1/task", json.to_vec(), "not json".into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), "".into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), "[1,2]".into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), "{}".into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), r#"{"user_id":""}"#.into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), long_id, 400),
        ("POST", "/api/v1/task", json.to_vec(), r#"{"user_id":1.5}"#.into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), r#"{"user_id":null}"#.into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), r#"{"user_id":true}"#.into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), r#"{"user_id":["a"]}"#.into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), r#"{"user_id":{"a":1}}"#.into(), 400),
        ("POST", "/api/v1/task", json.to_vec(), big, 413),
        ("POST", "/api/v1/task", vec![("Content-Type", "text/plain")], r#"{"user_id":"a"}"#.into(), 415),
        ("POST", "/api/v1/task", vec![("Content-Type", "application/x-www-form-urlencoded")], "user_id=a".into(), 415),
        ("GET", "/api/v1/task", vec![], "".into(), 405),
        ("PUT", "/api/v1/task", json.to_vec(), r#"{"user_id":"a"}"#.into(), 405),
        ("DELETE", "/api/v1/task", vec![], "".into(), 405),
        ("POST", "/api/v1/log", json.to_vec(), "{}".into(), 405),
        ("GET", "/nowhere", vec![], "".into(), 404),
        ("GET", "/api/v1/task/not-a-task", vec![], "".into(), 404),
        ("GET", "/api/v1/task/0123456789abcdef01234567", vec![], "".into(), 404),
        ("GET", "/api/v1/log?limit=0", vec![], "".into(), 400),
        ("GET", "/api/v1/log?after=nonsense", vec![], "".into(), 400),
        // Past 64 bits Redis refuses the id: the client's mistake, not an outage (503).
        ("GET", "/api/v1/log?after=18446744073709551616-0", vec![], "".into(), 400),
    ];
    for (method, path, headers, body, status) in cases {
        let reply = request(&host.addr, method, path, &headers, body.as_bytes());
        let what = format!("{method} {path} {:?}", &body[..body.len().min(40)]);
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/problem+json"), "{what}");
        let problem = reply.json();
        assert_eq!(problem["status"], status, "{what}");
        for field in ["type", "title", "detail"] {
            assert!(problem[field].as_str().is_some_and(|s| !s.is_empty()), "{what}: no {field}");
        }
        if status == 405 {
            assert!(reply.header("allow").is_some(), "{what}: no Allow header");
        }
    }
    // A chunked body that never declares its length is cut off at 4 KiB too.
    let chunk = "x".repeat(5_000);
    let raw = format!(
        "POST /api/v1/task HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    assert_eq!(support::raw_request(&host.addr, raw.as_bytes()).status, 413);
    assert_eq!(state_keys(&redis), Vec::<String>::new(), "bad input reached Redis");
}

/// Redis that cannot answer (paused with SIGSTOP) gets a 503 with Retry-After within 2 s,
/// and no task is stored; service resumes when Redis does.
#[test]
fn redis_that_cannot_answer_gets_503_and_nothing_is_stored() {
    let (redis, host) = start();
    redis.signal("-STOP");
    let reply = host.post_task(r#"{"user_id":"bob"}"#);
    let health = host.get("/healthz");
    redis.signal("-CONT");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.elapsed < Duration::from_millis(2_500), "503 took {:?}", reply.elapsed);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.header("content-type"), Some("application/problem+json"));
    assert_eq!(health.status, 503);
    assert_eq!(state_keys(&redis), Vec::<String>::new(), "a failed admission left state behind");

    assert_eq!(host.get("/healthz").status, 200);
    assert_eq!(host.post_task(r#"{"user_id":"bob"}"#).status, 200);
}

/// A JSON integer user id is taken as its decimal string, and user ids that look like the
/// app's own keys stay separate users.
#[test]
fn integer_and_hostile_user_ids_are_separate_users() {
    let (_redis, host) = start();
    let numeric = host.post_task(r#"{"user_id":42}"#).json();
    assert_eq!(numeric["user_id"], "42");
    // Each of these is a first task for its own user, so each runs inline.
    for id in ["42 ", "taskq:q:42", "t:abc", "*", "{42}", "a\nb", "a\u{0}b", "ünïcødé"] {
        let body = serde_json::json!({ "user_id": id }).to_string();
        let reply = host.post_task(&body);
        assert_eq!(reply.status, 200, "{id:?}: {}", reply.body);
        assert_eq!(reply.json()["user_id"], id);
    }
    let again = host.post_task(r#"{"user_id":"42"}"#);
    assert_eq!(again.status, 202, "\"42\" and 42 are the same user");
}

fn post_with_key(host: &Host, user: &str, key: &str) -> support::Reply {
    let body = format!(r#"{{"user_id":"{user}"}}"#);
    request(
        &host.addr,
        "POST",
        "/api/v1/task",
        &[("Content-Type", "application/json"), ("Idempotency-Key", key)],
        body.as_bytes(),
    )
}

/// A retried POST with the same Idempotency-Key returns the original task and creates none;
/// the same key for another user is another task.
#[test]
fn a_repeated_idempotency_key_returns_the_original_task() {
    let (redis, host) = start();
    let first = post_with_key(&host, "carol", "order-1");
    assert_eq!(first.status, 200, "{}", first.body);
    let again = post_with_key(&host, "carol", "order-1");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["task_id"], first.json()["task_id"]);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    rate_limit(&again);
    let other_user = post_with_key(&host, "dave", "order-1");
    assert_eq!(other_user.status, 200);
    assert_ne!(other_user.json()["task_id"], first.json()["task_id"]);
    assert_eq!(redis.query::<usize>(&["XLEN", "task_log"]), 2);

    for bad in ["", &"k".repeat(129), "two words"] {
        assert_eq!(post_with_key(&host, "carol", bad).status, 400, "key {bad:?}");
    }
}

/// The same Idempotency-Key with another payload, kind or cost is a 422 (the IETF draft), not
/// the earlier task, and stores nothing; the original body still replays.
#[test]
fn an_idempotency_key_reused_for_another_request_is_422() {
    let (redis, host) = start();
    let send = |body: &str| {
        request(
            &host.addr,
            "POST",
            "/api/v1/task",
            &[("Content-Type", "application/json"), ("Idempotency-Key", "order-9")],
            body.as_bytes(),
        )
    };
    let original = r#"{"user_id":"frank","payload":{"n":1}}"#;
    let first = send(original);
    assert_eq!(first.status, 200, "{}", first.body);
    for other in [
        r#"{"user_id":"frank","payload":{"n":2}}"#,
        r#"{"user_id":"frank"}"#,
        r#"{"user_id":"frank","payload":{"n":1},"cost":2}"#,
    ] {
        let reply = send(other);
        assert_eq!(reply.status, 422, "{other}: {}", reply.body);
        assert_eq!(reply.json()["type"], "urn:task-api:problem:idempotency-key-reused");
    }
    let again = send(original);
    assert_eq!((again.status, again.header("idempotency-replayed")), (200, Some("true")), "{}", again.body);
    assert_eq!(again.json()["task_id"], first.json()["task_id"]);
    assert_eq!(redis.query::<usize>(&["XLEN", "task_log"]), 1);
}

/// Concurrent duplicates (same user, same key) create exactly one task.
#[test]
fn concurrent_duplicates_create_one_task() {
    let (redis, host) = start();
    let host = std::sync::Arc::new(host);
    // A first task so that the duplicates are queued (202), not run inline.
    assert_eq!(host.post_task(r#"{"user_id":"erin"}"#).status, 200);
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || post_with_key(&host, "erin", "same-key"))
        })
        .collect();
    let ids: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().ok())
        .map(|reply| {
            assert_eq!(reply.status, 202, "{}", reply.body);
            reply.json()["task_id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 10);
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(redis.query::<usize>(&["LLEN", &app_key(&format!("{}erin", word::QUEUE))]), 1);
}

/// With `max_backlog` = 2, a third queued task for the same user is refused with 429 and
/// Retry-After, on both ledgers, and its Idempotency-Key is left unused (a retry with it
/// once there is room is a new task); other users are unaffected.
#[test]
fn a_full_backlog_answers_429() {
    for ledger in ["redis", "kv"] {
        let redis = Redis::start();
        let variables = vec![("max_backlog".into(), "2".into()), ("ledger".into(), ledger.into())];
        let host = Host::start(&redis, &HostOptions { variables, ..HostOptions::default() });
        let statuses: Vec<u16> = (0..3).map(|_| host.post_task(r#"{"user_id":"frank"}"#).status).collect();
        assert_eq!(statuses, vec![200, 202, 202], "{ledger}");
        let refused =
            support::try_post_task(&host.addr, "frank", Some("full-1")).unwrap_or_else(|e| panic!("POST: {e}"));
        assert_eq!(refused.status, 429, "{ledger}: {}", refused.body);
        assert!(refused.header("retry-after").is_some(), "{ledger}");
        assert_eq!(refused.json()["status"], 429, "{ledger}");
        assert_eq!(redis.query::<usize>(&["LLEN", &app_key(&format!("{}frank", word::QUEUE))]), 2, "{ledger}");
        assert!(!redis.query::<bool>(&["EXISTS", &app_key(&format!("{}frank:full-1", word::IDEMPOTENCY))]), "{ledger}");
        assert_eq!(host.post_task(r#"{"user_id":"grace"}"#).status, 200, "{ledger}");
    }
}

/// A body that trickles in too slowly (slow loris) gets a 408 problem, not a hang, and
/// stores nothing.
#[test]
fn a_body_that_never_finishes_gets_408_and_stores_nothing() {
    let (redis, host) = start();
    let partial = "POST /api/v1/task HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"user_id\":";
    let reply = support::raw_request(&host.addr, partial.as_bytes());
    assert_eq!(reply.status, 408, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/problem+json"));
    assert!(reply.elapsed >= Duration::from_secs(4), "gave up after {:?}", reply.elapsed);
    assert_eq!(state_keys(&redis), Vec::<String>::new());
}

/// The value of one sample line of a Prometheus text exposition.
fn sample(metrics: &str, name: &str) -> Option<i64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` counts answers, admissions, queue depth and lateness exactly, as they happen.
#[test]
fn metrics_count_what_happened() {
    let (_redis, host) = start();
    assert_eq!(host.post_task(r#"{"user_id":"m"}"#).status, 200);
    let queued = host.post_task(r#"{"user_id":"m"}"#);
    assert_eq!(queued.status, 202);
    assert_eq!(host.post_task("not json").status, 400);
    // Reads are counted too, by the script that answers them (a known and an unknown task,
    // a health probe).
    let task_id = queued.json()["task_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(host.get(&format!("/api/v1/task/{task_id}")).status, 200);
    assert_eq!(host.get("/api/v1/task/0123456789abcdef01234567").status, 404);
    assert_eq!(host.get("/healthz").status, 200);

    let before = host.get("/metrics");
    assert_eq!(before.status, 200);
    assert_eq!(before.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = before.body;
    assert_eq!(sample(&text, r#"task_api_http_responses_total{status="200"}"#), Some(3), "{text}");
    assert_eq!(sample(&text, r#"task_api_http_responses_total{status="202"}"#), Some(1), "{text}");
    assert_eq!(sample(&text, r#"task_api_http_responses_total{status="400"}"#), Some(1), "{text}");
    assert_eq!(sample(&text, r#"task_api_http_responses_total{status="404"}"#), Some(1), "{text}");
    assert_eq!(sample(&text, r#"task_api_admissions_total{placement="inline"}"#), Some(1), "{text}");
    assert_eq!(sample(&text, r#"task_api_admissions_total{placement="queued"}"#), Some(1), "{text}");
    assert_eq!(sample(&text, "task_api_queue_depth"), Some(1), "{text}");
    assert_eq!(sample(&text, "task_api_waiting_users"), Some(1), "{text}");

    // The queued task runs about a second later; then the queue is empty and both tasks
    // are in the lateness histogram.
    let ran = host.wait_for_lines(2, Duration::from_secs(10), |l| l.starts_with("m-task completed at-"));
    assert_eq!(ran, 2);
    let text = host.get("/metrics").body;
    assert_eq!(sample(&text, "task_api_queue_depth"), Some(0), "{text}");
    assert_eq!(sample(&text, "task_api_waiting_users"), Some(0), "{text}");
    assert_eq!(sample(&text, "task_api_lateness_seconds_count"), Some(2), "{text}");
    assert_eq!(sample(&text, r#"task_api_lateness_seconds_bucket{le="+Inf"}"#), Some(2), "{text}");
    assert_eq!(sample(&text, "task_api_rule_violations_total"), Some(0), "{text}");
    // The first /metrics read is counted once it has answered.
    assert_eq!(sample(&text, r#"task_api_http_responses_total{status="200"}"#), Some(4), "{text}");
}

/// The overview is a bounded snapshot: the watched user's queue in run order, the users due
/// soonest, and the newest completions first.
#[test]
fn the_overview_shows_queue_and_recent_completions() {
    let (_redis, host) = start();
    let user = "o v:*{}\n😀";
    let body = serde_json::json!({ "user_id": user }).to_string();
    let replies: Vec<_> = (0..3).map(|_| host.post_task(&body)).collect();
    assert_eq!(replies.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 202, 202]);
    let encoded: String = user.bytes().map(|b| format!("%{b:02X}")).collect();
    let overview = host.get(&format!("/api/v1/overview?user_id={encoded}"));
    assert_eq!(overview.status, 200, "{}", overview.body);
    let view = overview.json();
    assert_eq!(view["queued_tasks"], 2);
    assert_eq!(view["waiting_users"], 1);
    assert_eq!(view["next_due"][0]["user_id"], user);
    assert_eq!(view["next_due"][0]["queued"], 2);
    assert_eq!(view["recent"][0]["task_id"], replies[0].json()["task_id"]);
    assert_eq!(view["user"]["user_id"], user);
    let queued: Vec<_> = view["user"]["queued"].as_array().cloned().unwrap_or_default();
    let expected: Vec<_> =
        replies[1..].iter().map(|r| (r.json()["task_id"].clone(), r.json()["slot"].clone())).collect();
    let got: Vec<_> = queued.iter().map(|q| (q["task_id"].clone(), q["slot"].clone())).collect();
    assert_eq!(got, expected);
    assert_eq!(view["user"]["completed"], serde_json::json!([replies[0].json()["completed_at"]]));
    assert_eq!(host.get("/api/v1/overview").json()["user"], serde_json::Value::Null);
    assert_eq!(host.get("/api/v1/overview?user_id=%FF").status, 400);
}

/// A payload is stored with its task exactly as sent (key order, number text, escapes) and
/// comes back in `GET /api/v1/task/{id}`, the NDJSON log and the log stream entry; the
/// seed-format line does not change. Over 2 KiB it is refused with 413 and nothing stored.
#[test]
fn a_payload_is_kept_as_sent_and_shown_with_its_task() {
    let (redis, host) = start();
    let sent = r#"{"z": 1, "a": [1.50, 12345678901234567890123, "\u00e9\n"], "nested": {"b": null}}"#;
    let reply = host.post_task(&format!(r#"{{"user_id":"pay","payload":{sent}}}"#));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let task_id = reply.json()["task_id"].as_str().unwrap_or_default().to_string();
    let completed_at = reply.json()["completed_at"].as_i64().unwrap_or(-1);

    let task = host.get(&format!("/api/v1/task/{task_id}"));
    assert!(task.body.contains(&format!(r#""payload":{sent}"#)), "{}", task.body);
    assert_eq!(task.json()["status"], "completed");
    let ndjson = request(&host.addr, "GET", "/api/v1/log", &[("Accept", "application/x-ndjson")], b"");
    assert!(ndjson.body.contains(&format!(r#""payload":{sent}"#)), "{}", ndjson.body);
    let overview = host.get("/api/v1/overview?user_id=pay");
    assert!(overview.body.contains(&format!(r#""payload":{sent}"#)), "{}", overview.body);
    let stream: Vec<(String, Vec<String>)> = redis.query(&["XRANGE", "task_log", "-", "+"]);
    assert!(stream.iter().any(|(_, fields)| fields.iter().any(|f| f == sent)), "no payload in the stream: {stream:?}");
    assert_eq!(host.get("/api/v1/log").body, format!("pay-task completed at-{completed_at}\n"));

    // A task without a payload has none anywhere, and `null` means none.
    let plain = host.post_task(r#"{"user_id":"plain","payload":null}"#).json();
    let plain = host.get(&format!("/api/v1/task/{}", plain["task_id"].as_str().unwrap_or_default())).json();
    assert_eq!(plain.get("payload"), None, "{plain}");

    // The limit is the payload's own JSON text, 2048 bytes: a string of 2046 characters fits.
    let at_limit = format!(r#"{{"user_id":"big","payload":"{}"}}"#, "x".repeat(2_046));
    assert_eq!(host.post_task(&at_limit).status, 200);
    let keys_before = state_keys(&redis);
    let over = host.post_task(&format!(r#"{{"user_id":"big","payload":"{}"}}"#, "x".repeat(2_047)));
    assert_eq!(over.status, 413, "{}", over.body);
    assert_eq!(over.header("content-type"), Some("application/problem+json"));
    assert!(over.json()["detail"].as_str().is_some_and(|d| d.contains("2049")), "{}", over.body);
    assert_eq!(state_keys(&redis), keys_before, "a refused payload reached Redis");
}

fn delete(host: &Host, path: &str) -> support::Reply {
    request(&host.addr, "DELETE", path, &[], b"")
}

/// DELETE cancels a queued task (200, and 200 again when repeated), refuses a completed one
/// (409) and an unknown one (404). The cancelled task never runs; the tasks after it keep
/// the slots their 202s promised; the backlog and `/metrics` count it.
#[test]
fn a_queued_task_can_be_cancelled_and_never_runs() {
    let (_redis, host) = start();
    let replies: Vec<_> = (0..4).map(|_| host.post_task(r#"{"user_id":"cancel-me"}"#).json()).collect();
    assert_eq!(
        replies.iter().map(|r| r["status"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        ["completed", "queued", "queued", "queued"]
    );
    let id = |i: usize| replies[i]["task_id"].as_str().unwrap_or_default().to_string();
    let victim = format!("/api/v1/task/{}", id(2));

    let cancelled = delete(&host, &victim);
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let body = cancelled.json();
    assert_eq!((body["task_id"].as_str(), body["status"].as_str()), (Some(id(2).as_str()), Some("cancelled")));
    assert_eq!(body["slot"], replies[2]["slot"]);
    let again = delete(&host, &victim);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["cancelled_at"], body["cancelled_at"], "a repeated DELETE changed the record");
    assert_eq!(host.get(&victim).json()["status"], "cancelled");

    let completed = delete(&host, &format!("/api/v1/task/{}", id(0)));
    assert_eq!(completed.status, 409, "{}", completed.body);
    assert_eq!(completed.header("content-type"), Some("application/problem+json"));
    assert_eq!(delete(&host, "/api/v1/task/0123456789abcdef01234567").status, 404);
    assert_eq!(delete(&host, "/api/v1/task/not-a-task").status, 404);
    let put = request(&host.addr, "PUT", &victim, &[], b"");
    assert_eq!(put.status, 405);
    assert!(put.header("allow").is_some_and(|a| a.contains("DELETE")), "{:?}", put.headers);

    let state = host.get("/api/v1/users/cancel-me").json();
    assert_eq!(state["queued"], 2, "{state}");
    let text = host.get("/metrics").body;
    assert_eq!(sample(&text, "task_api_cancelled_total"), Some(1), "{text}");
    assert_eq!(sample(&text, "task_api_queue_depth"), Some(2), "{text}");

    // The two others run, each at (not before) the slot it was given; the cancelled one never.
    let ran = host.wait_for_lines(3, Duration::from_secs(10), |l| l.starts_with("cancel-me-task completed at-"));
    assert_eq!(ran, 3, "stderr:\n{}", host.stderr_text());
    for i in [1, 3] {
        let task = host.get(&format!("/api/v1/task/{}", id(i))).json();
        assert_eq!(task["status"], "completed", "{task}");
        let (slot, at) = (replies[i]["slot"].as_i64().unwrap_or(0), task["completed_at"].as_i64().unwrap_or(0));
        assert!(at >= slot, "task {i} ran at {at}, before its slot {slot}");
    }
    let log = request(&host.addr, "GET", "/api/v1/log", &[("Accept", "application/x-ndjson")], b"").body;
    assert!(!log.contains(&id(2)), "the cancelled task ran:\n{log}");
    assert_eq!(host.get(&victim).json()["status"], "cancelled");
    assert_eq!(delete(&host, &format!("/api/v1/task/{}", id(3))).status, 409);
}

/// `GET /api/v1/users/{id}`: the backlog, the next task and slot, what is left of each
/// window (as the `RateLimit` field would say it now) and the last completions; behind the
/// admin token when one is set.
#[test]
fn one_users_state_at_a_glance() {
    let redis = Redis::start();
    let options = HostOptions { variables: vec![("admin_token".into(), "s3cret".into())], ..HostOptions::default() };
    let host = Host::start(&redis, &options);
    let auth = [("Authorization", "Bearer s3cret")];
    let get = |path: &str| request(&host.addr, "GET", path, &auth, b"");
    let user = "a/b c+😀";
    let encoded: String = user.bytes().map(|b| format!("%{b:02X}")).collect();
    let path = format!("/api/v1/users/{encoded}");
    assert_eq!(host.get(&path).status, 401);

    let fresh = get(&path);
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let fresh = fresh.json();
    assert_eq!((fresh["user_id"].as_str(), fresh["queued"].as_i64()), (Some(user), Some(0)));
    assert_eq!(fresh["next_task"], serde_json::Value::Null);
    assert_eq!(fresh["next_slot"], fresh["now"], "a fresh user's next slot is now");
    assert_eq!(
        fresh["remaining"],
        serde_json::json!([{"policy": "burst", "q": 1, "w": 1, "r": 1}, {"policy": "minute", "q": 20, "w": 60, "r": 20}])
    );

    let body = serde_json::json!({ "user_id": user }).to_string();
    let replies: Vec<_> = (0..3).map(|_| host.post_task(&body)).collect();
    let state = get(&path).json();
    assert_eq!(state["queued"], 2);
    assert_eq!(state["next_task"]["task_id"], replies[1].json()["task_id"]);
    assert_eq!(state["next_task"]["slot"], replies[1].json()["slot"]);
    assert_eq!(state["next_slot"].as_i64(), replies[2].json()["slot"].as_i64().map(|s| s + 1_000));
    assert_eq!(state["recent_completions"], serde_json::json!([replies[0].json()["completed_at"]]));
    assert_eq!(state["limits"], serde_json::json!({"per_second": 1, "per_minute": 20}));
    // What the last POST's RateLimit field said, give or take the second that may have
    // passed since.
    let header = rate_limit(&replies[2]);
    let windows = state["remaining"].as_array().cloned().unwrap_or_default();
    assert_eq!(windows.len(), header.len());
    for (window, (name, params)) in windows.iter().zip(&header) {
        assert_eq!(window["policy"].as_str(), Some(name.as_str()));
        for (key, value) in params {
            let now = window[key.as_str()].as_i64().unwrap_or(-1);
            assert!(
                now == *value || (key == "t" && (value - 1..=*value).contains(&now)),
                "{key}: {now} vs header {value}"
            );
        }
    }

    assert_eq!(get("/api/v1/users/%FF").status, 400);
    assert_eq!(get("/api/v1/users/").status, 400);
    assert_eq!(get(&format!("/api/v1/users/{}", "x".repeat(129))).status, 400);
    assert_eq!(request(&host.addr, "DELETE", &path, &auth, b"").status, 405);
}

/// With the ledger in the key-value store, a user's state reads it from there.
#[test]
fn one_users_state_with_the_kv_ledger() {
    let redis = Redis::start();
    let options = HostOptions { variables: vec![("ledger".into(), "kv".into())], ..HostOptions::default() };
    let host = Host::start(&redis, &options);
    let replies: Vec<_> = (0..2).map(|_| host.post_task(r#"{"user_id":"kv-user"}"#).json()).collect();
    let state = host.get("/api/v1/users/kv-user").json();
    assert_eq!(state["queued"], 1, "{state}");
    assert_eq!(state["next_slot"].as_i64(), replies[1]["slot"].as_i64().map(|s| s + 1_000), "{state}");
    assert_eq!(state["remaining"][1]["r"], 18, "{state}");
}
