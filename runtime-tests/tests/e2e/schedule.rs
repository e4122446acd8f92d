//! The schedule end to end: bursts of requests, spread over replicas sharing one Redis, run on
//! the exact schedule, each task once, and the log proves it. One test keeps the default
//! policy (1 per second and 20 per minute, the product's promise) and so runs a full minute;
//! the others run the same shape under a policy of short windows, in seconds.

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Host, HostOptions, Redis, check, percentile_ms, read_log};

const SMALL_USERS: usize = 3;
const SMALL_TASKS: usize = 3;

/// The policy a burst runs under: `quota` tasks per `window_ms` on top of 1 per second.
struct Shape {
    /// The `policies` variable, or `None` for the app's default.
    policies: Option<&'static str>,
    quota: i64,
    window_ms: i64,
    /// Tasks of the one hot user: enough to cross the long window at least once.
    burst: usize,
}

/// The default policy: 20 slots a second apart, then the 21st a minute after the first.
const DEFAULT: Shape = Shape { policies: None, quota: 20, window_ms: 60_000, burst: 25 };

/// The same shape in seconds: 3 slots a second apart, then the 4th 4 s after the first
/// (slots at 0, 1, 2, 4, 5, 6 and 8 s).
const SHORT: Shape =
    Shape { policies: Some(r#"{"kinds": {"default": ["1/1s", "3/4s"]}}"#), quota: 3, window_ms: 4_000, burst: 7 };

/// `shape.burst` requests at once for one user plus 3 users with 3 tasks each, spread
/// round-robin over `replicas` hosts, with the ledger in `ledger` (the `ledger` variable:
/// redis or kv); then the whole log is checked: every window of the policy holds, each
/// acknowledged task ran once at or after the slot its answer promised, and each user's
/// tasks ran in the order of their slots.
fn burst_runs_on_the_rule(replicas: usize, ledger: &str, lossy_cas: bool, shape: &Shape) {
    let redis = Redis::start();
    let mut variables = vec![("ledger".to_string(), ledger.to_string())];
    if let Some(policies) = shape.policies {
        variables.push(("policies".to_string(), policies.to_string()));
    }
    let options = HostOptions { lossy_cas, variables };
    let hosts: Vec<Arc<Host>> = (0..replicas).map(|_| Arc::new(Host::start(&redis, &options))).collect();

    let mut users: Vec<String> = vec!["burst".to_string(); shape.burst];
    for u in 0..SMALL_USERS {
        users.extend(std::iter::repeat_n(format!("small-{u}"), SMALL_TASKS));
    }
    let threads: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(i, user)| {
            let host = hosts[i % hosts.len()].clone();
            std::thread::spawn(move || host.post_task(&format!(r#"{{"user_id":"{user}"}}"#)))
        })
        .collect();
    let replies: Vec<_> = threads.into_iter().filter_map(|t| t.join().ok()).collect();
    let total = shape.burst + SMALL_USERS * SMALL_TASKS;
    assert_eq!(replies.len(), total);
    let mut latencies = Vec::new();
    let mut acknowledged = Vec::new();
    // The slot each answer promised, by task id.
    let mut promised = BTreeMap::new();
    let mut burst_slots = Vec::new();
    for reply in &replies {
        assert!(reply.status == 200 || reply.status == 202, "{} {}", reply.status, reply.body);
        let body = reply.json();
        let (Some(id), Some(slot)) = (body["task_id"].as_str(), body["slot"].as_i64()) else {
            panic!("no task_id or slot in {}", reply.body)
        };
        acknowledged.push(id.to_string());
        promised.insert(id.to_string(), slot);
        if body["user_id"] == "burst" {
            burst_slots.push(slot);
        }
        latencies.push(reply.elapsed);
    }

    // The rule worked by hand (not the app's code): arrivals within a few ms of each other
    // get slots a second apart, `quota` of them per window, each window's first slot a
    // window after the previous window's first.
    burst_slots.sort_unstable();
    let first = burst_slots[0];
    let expected: Vec<i64> = (0..shape.burst as i64)
        .map(|k| first + (k / shape.quota) * shape.window_ms + (k % shape.quota) * 1_000)
        .collect();
    assert_eq!(burst_slots, expected, "burst slots are not the rule's schedule");

    // Every completion prints one line on exactly one replica; wait for all of them.
    // Its last slot, and half a minute more for a loaded machine.
    let span = u64::try_from(expected[expected.len() - 1] - first).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(30_000 + span);
    let is_log_line = |l: &str| l.contains("-task completed at-");
    loop {
        let seen: usize = hosts.iter().map(|h| h.wait_for_lines(0, Duration::ZERO, is_log_line)).sum();
        if seen >= total || Instant::now() > deadline {
            assert_eq!(seen, total, "stdout log lines after waiting");
            break;
        }
        hosts[0].wait_for_lines(seen + 1, Duration::from_millis(200), is_log_line);
    }

    let entries = read_log(&hosts[0]);
    let report = check::check(&entries, check::Rule::default(), Some(&acknowledged));
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!(entries.len(), total, "{}", report.summary());
    let windows = vec![
        check::Window { quota: 1, window_ms: 1_000 },
        check::Window { quota: shape.quota as u64, window_ms: shape.window_ms },
    ];
    let mut by_user: BTreeMap<&str, Vec<&check::Entry>> = BTreeMap::new();
    for entry in &entries {
        // The checker held each entry to the policy it names: it must be this run's.
        assert_eq!(entry.policy.as_ref(), Some(&windows), "the policy of {entry:?}");
        let id = entry.task_id.as_deref().unwrap_or_default();
        assert_eq!(entry.slot, promised.get(id).copied(), "{id} ran on another slot than its answer promised");
        by_user.entry(&entry.user_id).or_default().push(entry);
    }
    // FIFO: in completion order, each user's slots only grow.
    for (user, mut lane) in by_user {
        lane.sort_by_key(|e| e.completed_at);
        let slots: Vec<Option<i64>> = lane.iter().map(|e| e.slot).collect();
        assert!(slots.is_sorted(), "user {user:?} ran out of slot order: {slots:?}");
    }
    println!(
        "replicas={replicas} ledger={ledger} lossy_cas={lossy_cas} admission_ms p50={:.1} p99={:.1} max={:.1}; {}",
        percentile_ms(&mut latencies, 50.0),
        percentile_ms(&mut latencies, 99.0),
        percentile_ms(&mut latencies, 100.0),
        report.summary()
    );
}

/// The product's promise under its default policy, a full minute of it: 25 tasks for one
/// user over three replicas, slots 0..19 s then 60..64 s.
#[test]
fn a_burst_spread_over_three_replicas_runs_on_the_default_minute_rule() {
    burst_runs_on_the_rule(3, "redis", false, &DEFAULT);
}

#[test]
fn a_burst_on_one_replica_runs_on_the_rule() {
    burst_runs_on_the_rule(1, "redis", false, &SHORT);
}

/// The key-value ledger on a Redis-backed compare-and-swap whose answers cannot be trusted
/// (as Spin's): the host's lossy mode answers at random while still obeying
/// compare-and-swap. The schedule must be just as exact.
#[test]
fn a_burst_over_three_replicas_with_the_kv_ledger_and_lossy_cas_runs_on_the_rule() {
    burst_runs_on_the_rule(3, "kv", true, &SHORT);
}
