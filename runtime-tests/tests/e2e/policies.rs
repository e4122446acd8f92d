//! Policies end to end (docs/policies.md): kinds with their own windows, tiers changed live, weighted tasks and
//! long windows, against a real redis-server and real host processes. Expected slots come
//! from the rule's formula worked by hand, not from the app's code.

use crate::support;

use serde_json::Value;
use std::time::Duration;
use support::{Host, HostOptions, Redis, Reply, check, request};

const ADMIN: [(&str, &str); 1] = [("Authorization", "Bearer t0ken")];

fn host_with(redis: &Redis, policies: &str) -> Host {
    host_on(redis, policies, "redis")
}

/// A host with the ledger in `ledger` (the `ledger` variable: redis, or kv on the host's
/// lossy compare-and-swap, which is what Spin's is).
fn host_on(redis: &Redis, policies: &str, ledger: &str) -> Host {
    let variables = vec![
        ("policies".to_string(), policies.to_string()),
        ("admin_token".to_string(), "t0ken".to_string()),
        ("ledger".to_string(), ledger.to_string()),
    ];
    Host::start(redis, &HostOptions { variables, lossy_cas: ledger == "kv" })
}

fn post(host: &Host, body: Value) -> Reply {
    host.post_task(&body.to_string())
}

fn slot(reply: &Reply) -> i64 {
    reply.json()["slot"].as_i64().unwrap_or_else(|| panic!("no slot in {} {}", reply.status, reply.body))
}

/// The task log's NDJSON lines (one page: these tests complete few tasks).
fn log_lines(host: &Host) -> Vec<String> {
    let reply = request(&host.addr, "GET", "/api/v1/log", &[("Accept", "application/x-ndjson"), ADMIN[0]], b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body.lines().map(str::to_string).collect()
}

/// The task log as raw NDJSON objects (for the fields the checker does not keep).
fn ndjson(host: &Host) -> Vec<Value> {
    log_lines(host).iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// The log as the checker reads it, checked against the policy each entry names.
fn check_log(host: &Host) -> check::Report {
    let entries: Vec<check::Entry> = log_lines(host).iter().filter_map(|l| check::parse_line(l)).collect();
    check::check(&entries, check::Rule::default(), None)
}

/// Waits until the log holds `count` entries (bounded), and returns them.
fn wait_for_log(host: &Host, count: usize, within: Duration) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let log = ndjson(host);
        if log.len() >= count || std::time::Instant::now() > deadline {
            return log;
        }
        // Completions happen at slots seconds apart; polling the log is the event here.
        host.wait_for_lines(log.len() + 1, Duration::from_millis(500), |l| l.contains("-task completed at-"));
    }
}

fn set_tier(host: &Host, user: &str, tier: Value) -> Reply {
    let body = serde_json::json!({ "tier": tier }).to_string();
    let headers = [("Content-Type", "application/json"), ADMIN[0]];
    request(&host.addr, "PUT", &format!("/api/v1/users/{user}/tier"), &headers, body.as_bytes())
}

/// One user, two kinds at once: the `default` lane (1/s) queues while the `email` lane
/// (2 per 3 s) runs its first two tasks inline and its third 3 s after the first. Each log
/// entry names its kind, cost and policy, and every window holds on each lane.
#[test]
fn one_user_with_two_kinds_runs_each_lane_on_its_own_limits() {
    let redis = Redis::start();
    let host = host_with(&redis, r#"{"kinds": {"default": ["1/1s", "20/60s"], "email": ["2/3s"]}}"#);
    let default: Vec<Reply> = (0..3).map(|_| post(&host, serde_json::json!({"user_id": "u"}))).collect();
    let email: Vec<Reply> = (0..3).map(|_| post(&host, serde_json::json!({"user_id": "u", "kind": "email"}))).collect();
    assert_eq!(default.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 202, 202]);
    assert_eq!(
        email.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 202],
        "{:?}",
        email.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let (d0, e0) = (slot(&default[0]), slot(&email[0]));
    assert_eq!([slot(&default[1]), slot(&default[2])], [d0 + 1_000, d0 + 2_000]);
    assert!(slot(&email[1]) - e0 < 1_000, "the second email ran on arrival");
    assert_eq!(slot(&email[2]), e0 + 3_000);
    assert_eq!((email[2].json()["kind"].as_str(), email[2].json()["cost"].as_i64()), (Some("email"), Some(1)));
    assert_eq!(email[2].header("RateLimit-Policy"), Some(r#""3s";q=2;w=3"#));
    assert_eq!(default[2].header("RateLimit-Policy"), Some(r#""1s";q=1;w=1, "60s";q=20;w=60"#));

    let log = wait_for_log(&host, 6, Duration::from_secs(20));
    assert_eq!(log.len(), 6, "{log:?}");
    for entry in &log {
        let (kind, policy) = (entry["kind"].as_str(), entry["policy"].as_str());
        let expected = if kind == Some("email") { "2/3000" } else { "1/1000,20/60000" };
        assert_eq!(policy, Some(expected), "{entry}");
        assert_eq!(entry["cost"], 1, "{entry}");
    }
    let report = check_log(&host);
    assert!(report.is_clean(), "{}", report.problems());
    let state = request(&host.addr, "GET", "/api/v1/users/u", &ADMIN, b"").json();
    assert_eq!(state["kinds"]["email"]["recent_completions"].as_array().map(Vec::len), Some(3), "{state}");
    assert_eq!(state["kinds"]["email"]["remaining"][0]["policy"], "3s", "{state}");
}

/// A tier changed by an admin mid-backlog on one replica applies to the next admission on
/// every replica, while the tasks already queued keep the slots their 202s promised.
/// Built-in: 1 per 2 s; `pro`: 2 per 1 s.
#[test]
fn a_tier_change_mid_backlog_keeps_promised_slots_and_applies_everywhere() {
    tier_change_mid_backlog("redis");
}

/// The same with the `kv` ledger.
#[test]
fn a_tier_change_mid_backlog_keeps_promised_slots_with_the_kv_ledger() {
    tier_change_mid_backlog("kv");
}

fn tier_change_mid_backlog(ledger: &str) {
    let redis = Redis::start();
    let policies = r#"{"kinds": {"default": ["1/2s"]}, "tiers": {"pro": {"default": ["2/1s"]}}}"#;
    let hosts: Vec<Host> = (0..3).map(|_| host_on(&redis, policies, ledger)).collect();
    let user = serde_json::json!({"user_id": "t"});
    let before: Vec<Reply> = (0..4).map(|_| post(&hosts[0], user.clone())).collect();
    let s0 = slot(&before[0]);
    let promised: Vec<i64> = before.iter().map(slot).collect();
    assert_eq!(promised, [s0, s0 + 2_000, s0 + 4_000, s0 + 6_000]);

    let changed = set_tier(&hosts[1], "t", Value::from("pro"));
    assert_eq!((changed.status, changed.json()["tier"].as_str()), (200, Some("pro")), "{}", changed.body);
    // Under pro, task 5 needs only task 3 (at s0 + 4 s) a second behind it, so it shares task
    // 4's slot (FIFO keeps it from going earlier); tasks 6 and 7 then wait for task 5's
    // second: s0 + 7 s. Under the built-in tier they would be 8, 10 and 12 s.
    let fifth = post(&hosts[2], user.clone());
    let sixth = post(&hosts[0], user.clone());
    let seventh = post(&hosts[1], user.clone());
    assert_eq!([slot(&fifth), slot(&sixth), slot(&seventh)], [s0 + 6_000, s0 + 7_000, s0 + 7_000]);
    for (i, reply) in before.iter().enumerate() {
        let id = reply.json()["task_id"].as_str().unwrap_or_default().to_string();
        let task = hosts[i % 3].get(&format!("/api/v1/task/{id}")).json();
        assert_eq!(task["slot"].as_i64(), Some(promised[i]), "task {i} kept its slot: {task}");
    }
    let state = request(&hosts[2].addr, "GET", "/api/v1/users/t", &ADMIN, b"").json();
    assert_eq!(state["tier"], "pro", "{state}");
    assert_eq!(state["remaining"][0]["q"], 2, "the pro windows are shown: {state}");

    let log = wait_for_log(&hosts[0], 7, Duration::from_secs(30));
    assert_eq!(log.len(), 7);
    let policies: Vec<&str> = log.iter().map(|e| e["policy"].as_str().unwrap_or("")).collect();
    assert_eq!(policies, ["1/2000", "1/2000", "1/2000", "1/2000", "2/1000", "2/1000", "2/1000"]);
    let report = check_log(&hosts[0]);
    assert!(report.is_clean(), "{}", report.problems());

    // Back to the built-in tier; an unknown tier or a malformed body is refused.
    assert_eq!(set_tier(&hosts[0], "t", Value::Null).json()["tier"], Value::Null);
    assert_eq!(request(&hosts[1].addr, "GET", "/api/v1/users/t", &ADMIN, b"").json()["tier"], Value::Null);
    let unknown = set_tier(&hosts[0], "t", Value::from("gold"));
    assert_eq!(unknown.status, 400);
    assert!(unknown.json()["detail"].as_str().is_some_and(|d| d.contains("pro")), "{}", unknown.body);
    let headers = [("Content-Type", "application/json"), ADMIN[0]];
    for body in [&b"{}"[..], b"[]", b"{\"tier\": 3}", b"{\"tier\": \"pro\", \"x\": 1}", b"not json"] {
        let reply = request(&hosts[0].addr, "PUT", "/api/v1/users/t/tier", &headers, body);
        assert_eq!(reply.status, 400, "{}: {}", String::from_utf8_lossy(body), reply.body);
    }
    assert_eq!(request(&hosts[0].addr, "PUT", "/api/v1/users/t/tier", &[], b"{\"tier\": null}").status, 401);
    let wrong_method = request(&hosts[0].addr, "POST", "/api/v1/users/t/tier", &ADMIN, b"");
    assert_eq!((wrong_method.status, wrong_method.header("Allow")), (405, Some("PUT")));
}

/// The README's worked example: kind `report` allows 3 units per 10 s and 5 per 60 s.
/// Tasks costing 2, 1, 2, 1 sent at once start at 0, 0, 10 s and 60 s: the third would make
/// 5 units in 10 s, the fourth 6 in 60 s. The log shows each task's cost, and the units
/// completed in every window stay within its quota.
#[test]
fn weighted_tasks_follow_the_unit_rule_as_in_the_readme() {
    weighted_tasks("redis");
}

/// The same with the `kv` ledger.
#[test]
fn weighted_tasks_follow_the_unit_rule_with_the_kv_ledger() {
    weighted_tasks("kv");
}

fn weighted_tasks(ledger: &str) {
    let redis = Redis::start();
    let host = host_on(&redis, r#"{"kinds": {"report": ["3/10s", "5/60s"]}}"#, ledger);
    let replies: Vec<Reply> = [2, 1, 2, 1]
        .into_iter()
        .map(|cost| post(&host, serde_json::json!({"user_id": "w", "kind": "report", "cost": cost})))
        .collect();
    let first = slot(&replies[0]);
    let slots: Vec<i64> = replies.iter().map(|r| slot(r) - first).collect();
    assert!(slots[1] < 1_000, "the second task shares the first's window: {slots:?}");
    assert_eq!([slots[2], slots[3]], [10_000, 60_000]);
    assert_eq!(replies[2].json()["cost"], 2);
    // After the fourth, queued tasks hold their units in the windows they will run in: the
    // 10 s window has room again once the third task (the newest whose units, with the
    // fourth's, fill its 3) leaves it, 20 s on; the 60 s window once the first leaves, 60 s on.
    assert_eq!(replies[3].header("RateLimit"), Some(r#""10s";r=0;t=20, "60s";r=0;t=60"#));

    let log = wait_for_log(&host, 3, Duration::from_secs(20));
    let costs: Vec<i64> = log.iter().map(|e| e["cost"].as_i64().unwrap_or(0)).collect();
    assert_eq!(costs, [2, 1, 2]);
    let report = check_log(&host);
    assert!(report.is_clean(), "{}", report.problems());
    // A cost no window could ever admit is refused, never queued.
    let over = post(&host, serde_json::json!({"user_id": "w", "kind": "report", "cost": 4}));
    assert_eq!(over.status, 422, "{}", over.body);
    assert!(over.json()["detail"].as_str().is_some_and(|d| d.contains("3 units per 10 s")), "{}", over.body);
    let state = request(&host.addr, "GET", "/api/v1/users/w", &ADMIN, b"").json();
    assert_eq!(state["kinds"]["report"]["queued"], 1, "only the 60 s task waits: {state}");
}

/// A 24-hour window with a small quota: the third report of the day is queued a full day
/// after the first, and the fields say so; cancelling it leaves the lane as it was.
#[test]
fn a_day_long_window_with_a_small_quota_holds() {
    let redis = Redis::start();
    let host = host_with(&redis, r#"{"kinds": {"daily": ["2/24h"]}}"#);
    let replies: Vec<Reply> =
        (0..3).map(|_| post(&host, serde_json::json!({"user_id": "d", "kind": "daily"}))).collect();
    assert_eq!(replies.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200, 202]);
    let first = slot(&replies[0]);
    assert_eq!(slot(&replies[2]), first + 86_400_000);
    let retry_after: i64 = replies[2].header("Retry-After").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((86_390..=86_400).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(replies[2].header("RateLimit-Policy"), Some(r#""24h";q=2;w=86400"#));
    assert!(
        replies[2].header("RateLimit").is_some_and(|v| v.starts_with(r#""24h";r=0;t="#)),
        "{:?}",
        replies[2].header("RateLimit")
    );
    assert_eq!(
        (replies[2].header("X-RateLimit-Limit"), replies[2].header("X-RateLimit-Remaining")),
        (Some("2"), Some("0"))
    );
    let reset: i64 = replies[2].header("X-RateLimit-Reset").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(
        (reset * 1_000 - (first + 86_400_000)).abs() <= 1_000,
        "reset {reset} is when the first report leaves the window"
    );

    let id = replies[2].json()["task_id"].as_str().unwrap_or_default().to_string();
    let cancelled = request(&host.addr, "DELETE", &format!("/api/v1/task/{id}"), &[], b"");
    assert_eq!((cancelled.status, cancelled.json()["kind"].as_str()), (200, Some("daily")), "{}", cancelled.body);
    // Cancelling never moves another task's slot, so the cancelled one's entry stays in the
    // ledger: a fourth report waits 24 h from the second.
    let fourth = post(&host, serde_json::json!({"user_id": "d", "kind": "daily"}));
    assert_eq!(slot(&fourth), slot(&replies[1]) + 86_400_000);
}

/// Bad kinds and costs get a 400 that says what is wrong; a configuration with a bad entry
/// answers 500 naming it, and nothing is admitted; with `x_ratelimit_headers = off` only
/// the IETF fields remain.
#[test]
fn bad_kinds_costs_and_configurations_get_clear_errors() {
    let redis = Redis::start();
    let host = host_with(&redis, r#"{"kinds": {"email": ["5/60s"]}, "tiers": {"pro": {"email": ["2/60s"]}}}"#);
    for (body, says) in [
        (serde_json::json!({"user_id": "b", "kind": "sms"}), "default, email"),
        (serde_json::json!({"user_id": "b", "kind": ["email"]}), "kind must be a string"),
        (serde_json::json!({"user_id": "b", "cost": 0}), "from 1 to 1000"),
        (serde_json::json!({"user_id": "b", "cost": 2.5}), "from 1 to 1000"),
        (serde_json::json!({"user_id": "b", "cost": "3"}), "whole number"),
    ] {
        let reply = post(&host, body.clone());
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        assert!(reply.json()["detail"].as_str().is_some_and(|d| d.contains(says)), "{body}: {}", reply.body);
    }
    // 3 units fit the built-in tier's email window (5) but not pro's (2).
    assert_eq!(post(&host, serde_json::json!({"user_id": "b", "kind": "email", "cost": 3})).status, 200);
    assert_eq!(set_tier(&host, "p", Value::from("pro")).status, 200);
    let refused = post(&host, serde_json::json!({"user_id": "p", "kind": "email", "cost": 3}));
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.json()["detail"].as_str().is_some_and(|d| d.contains("\"pro\"")), "{}", refused.body);
    assert_eq!(request(&host.addr, "GET", "/api/v1/users/p", &ADMIN, b"").json()["kinds"]["email"]["queued"], 0);

    let broken = host_with(&redis, r#"{"kinds": {"email": ["5/60x"]}}"#);
    let reply = post(&broken, serde_json::json!({"user_id": "b"}));
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(reply.json()["detail"].as_str().is_some_and(|d| d.contains(r#"kinds.email[0] "5/60x""#)), "{}", reply.body);

    let variables = vec![("x_ratelimit_headers".to_string(), "off".to_string())];
    let quiet = Host::start(&redis, &HostOptions { variables, ..Default::default() });
    let reply = post(&quiet, serde_json::json!({"user_id": "q"}));
    assert!(reply.header("RateLimit").is_some() && reply.header("X-RateLimit-Limit").is_none(), "{:?}", reply.headers);
    let reply = post(&host, serde_json::json!({"user_id": "q"}));
    assert_eq!(reply.header("X-RateLimit-Limit"), Some("1"), "{:?}", reply.headers);
}
