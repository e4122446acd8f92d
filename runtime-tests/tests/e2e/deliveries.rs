//! Deliveries end to end (docs/design.md, "Deliveries"): three replicas on one Redis, a
//! real backend on loopback that records every request (`runtime_tests::backend`), and the
//! stock Standard Webhooks verifier (python's `standardwebhooks`, in the venv test.sh makes).
//! Windows are held on the backend's own arrival times, not only on what the app logged.

use crate::support;
use runtime_tests::backend::{Backend, Recorded, window_breaks};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use support::{Host, HostOptions, Redis, app_key, check, read_log, request, wait_until};
use task_core::delivery::ADMISSION_STARTS_MAX;
use task_core::keys::{ALARM_SECONDS, alarm_word, word};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How much closer together than a window allows two arrivals at the backend may be: an
/// attempt starts when it is claimed on Redis's clock, and its request reaches the backend a
/// few ms later, by a delay that differs from one request to the next. §8's target is 5 ms;
/// the bench measures it (`bench --scenario delivery`, docs/numbers.md), where it is not met
/// on these shared cores. At 5 ms this test failed in 2 of about 12 runs on a loaded 2-core
/// machine (two arrivals 993.8 and 994.6 ms apart, 2026-12-05); at 10 ms, in 2 of 12 runs
/// beside a whole e2e run and a build (988.8 and 989.9 ms apart, the same night). The claimed
/// starts are held exactly (`check_log` below); this bounds the machine's jitter.
const ARRIVAL_TOLERANCE_MS: f64 = 25.0;

fn replicas(redis: &Redis, backend: &Backend, policies: &str, count: usize) -> Vec<Host> {
    let options = HostOptions {
        variables: vec![
            ("policies".into(), policies.into()),
            ("delivery_hosts".into(), format!("http://{}", backend.addr())),
            ("delivery_secret".into(), SECRET.into()),
        ],
        ..HostOptions::default()
    };
    (0..count).map(|_| Host::start(redis, &options)).collect()
}

/// Submits a task: answered 202, `running` when its admission started its first attempt,
/// `queued` otherwise. Its id and slot.
fn submit(host: &Host, body: &str) -> (String, i64) {
    let reply = host.post_task(body);
    assert_eq!(reply.status, 202, "{body}: {}", reply.body);
    let json = reply.json();
    (json["task_id"].as_str().unwrap_or_default().to_string(), json["slot"].as_i64().unwrap_or_default())
}

/// What a stalled delivery test needs to be explained: the drainer's lease and queue in Redis
/// and what each replica printed (a handler's error among it).
fn stall_report(redis: &Redis, hosts: &[Host]) -> String {
    let lease: Option<String> = redis.try_query(&["GET", &app_key(word::LEASE)]).unwrap_or(None);
    let lease_ttl: i64 = redis.try_query(&["PTTL", &app_key(word::LEASE)]).unwrap_or(-3);
    let zset = |word: &str| -> Vec<String> {
        redis.try_query(&["ZRANGE", &app_key(word), "0", "-1", "WITHSCORES"]).unwrap_or_default()
    };
    let (due, claims) = (zset(word::DUE), zset(word::CLAIMS));
    let now: Vec<String> = redis.try_query(&["TIME"]).unwrap_or_default();
    let mut report =
        format!("lease {lease:?} (pttl {lease_ttl}), Redis TIME {now:?}\ndue {due:?}\nclaims {claims:?}\n");
    for (i, host) in hosts.iter().enumerate() {
        report += &format!("replica {i} stderr:\n{}\n", host.stderr_text());
    }
    report
}

fn task(host: &Host, id: &str) -> serde_json::Value {
    let reply = host.get(&format!("/api/v1/task/{id}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn envelope(r: &Recorded) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&r.body)))
}

/// The payload's text inside the envelope, exactly as it arrived: the envelope's last field.
fn raw_payload(r: &Recorded) -> String {
    let body = String::from_utf8_lossy(&r.body);
    let start = body.rfind(r#","payload":"#).map(|i| i + r#","payload":"#.len()).unwrap_or(0);
    body[start..body.len().saturating_sub(1)].to_string()
}

/// Verifies every request with the stock Standard Webhooks library; `Err` names the first
/// one it refused.
fn verify_with_standardwebhooks(requests: &[Recorded]) -> Result<(), String> {
    let python = support::repo_root().join("target/webhooks-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: runtime-tests/test.sh installs it (need_standardwebhooks)",
        python.display()
    );
    let script = r#"
import json, sys
from standardwebhooks import Webhook
hook = Webhook(sys.argv[1])
for line in sys.stdin:
    r = json.loads(line)
    try:
        hook.verify(r["body"].encode(), r["headers"])
    except Exception as e:
        print(r["headers"].get("webhook-id"), type(e).__name__, e)
        sys.exit(1)
print("verified", flush=True)
"#;
    let mut child = Command::new(python)
        .args(["-c", script, SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python: {e}"));
    let mut input = String::new();
    for r in requests {
        let headers: HashMap<&str, &str> = r.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let line = serde_json::json!({"headers": headers, "body": String::from_utf8_lossy(&r.body)});
        input.push_str(&format!("{line}\n"));
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("python: {e}"));
    let said = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() && said == "verified" { Ok(()) } else { Err(said) }
}

/// Tasks of one kind from three replicas reach the backend exactly once each, on the windows
/// counted on the backend's own arrival times, signed so that the stock verifier accepts
/// them (and refuses a tampered one), with the envelope's payload the exact text sent; and the
/// app's log passes the checker on the attempts' starts.
#[test]
fn deliveries_hold_the_windows_at_the_backend_signed_with_the_payload_as_sent() {
    let redis = Redis::start();
    let backend = Backend::start();
    let policies =
        format!(r#"{{"kinds": {{"mail": {{"windows": ["1/1s", "3/4s"], "target": "{}"}}}}}}"#, backend.url("/ok"));
    let hosts = replicas(&redis, &backend, &policies, 3);
    let payloads =
        [r#"{"n":1.50,"e":1e3}"#, r#"["é","\u00e9",{"deep":[null,true]}]"#, r#""text""#, "0", r#"{"b":1,"a":2}"#];
    let mut sent: HashMap<String, (String, &str, i64)> = HashMap::new();
    let users = ["ann", "bob", "ché", "dee"];
    for (i, payload) in payloads.iter().enumerate() {
        for (u, user) in users.iter().enumerate() {
            let body = format!(r#"{{"user_id":"{user}","kind":"mail","payload":{payload}}}"#);
            let (id, slot) = submit(&hosts[(i + u) % 3], &body);
            sent.insert(id, (user.to_string(), payload, slot));
        }
    }
    let arrived = backend.wait_for(sent.len(), Duration::from_secs(30));
    assert_eq!(
        arrived.len(),
        sent.len(),
        "{} of {} tasks arrived\n{}",
        arrived.len(),
        sent.len(),
        stall_report(&redis, &hosts)
    );

    let mut seen = HashMap::new();
    for r in &arrived {
        let id = r.header("webhook-id").unwrap_or_default().to_string();
        *seen.entry(id.clone()).or_insert(0) += 1;
        let (user, payload, slot) = sent.get(&id).unwrap_or_else(|| panic!("unknown webhook-id {id}"));
        let e = envelope(r);
        assert_eq!(
            (e["task_id"].as_str(), e["user_id"].as_str(), e["kind"].as_str()),
            (Some(id.as_str()), Some(user.as_str()), Some("mail"))
        );
        assert_eq!((e["cost"].as_i64(), e["attempt"].as_i64(), e["slot"].as_i64()), (Some(1), Some(1), Some(*slot)));
        assert_eq!(raw_payload(r), *payload, "the payload as sent");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("authorization").is_none(), "nothing secret is sent");
    }
    assert!(seen.values().all(|&n| n == 1), "each task once: {seen:?}");
    let all: Vec<&Recorded> = arrived.iter().collect();
    let broken = window_breaks(&all, &[(1, 1_000.0), (3, 4_000.0)], ARRIVAL_TOLERANCE_MS, |r| {
        envelope(r)["user_id"].to_string()
    });
    assert!(broken.is_empty(), "{broken:#?}");

    assert_eq!(verify_with_standardwebhooks(&arrived), Ok(()));
    let mut tampered = arrived[0].clone();
    tampered.body = String::from_utf8_lossy(&tampered.body).replace("\"attempt\":1", "\"attempt\":2").into_bytes();
    assert!(verify_with_standardwebhooks(&[tampered]).is_err(), "a tampered body must be refused");

    // The log: one entry per attempt, the windows on the starts, and each arrival a few ms
    // after its claimed start.
    let entries = read_log(&hosts[0]);
    let report = check::check(&entries, check::Rule::default(), Some(&sent.keys().cloned().collect::<Vec<_>>()));
    assert!(report.is_clean(), "{}", report.problems());
    let started: HashMap<&str, i64> =
        entries.iter().filter_map(|e| Some((e.task_id.as_deref()?, e.started_at?))).collect();
    let lag = arrived
        .iter()
        .map(|r| r.at_ms - started[r.header("webhook-id").unwrap_or_default()] as f64)
        .fold(f64::MIN, f64::max);
    println!("deliveries: {} arrivals, the latest {lag:.1} ms after its claimed start", arrived.len());
    assert!(lag < 250.0, "an arrival {lag:.1} ms after its start");
}

/// A 5xx is retried with the same `webhook-id` and the next attempt number, after the backoff
/// (or the backend's Retry-After), inside the windows; a 404 fails the task at once and a 503
/// after its last attempt, readable with every attempt; neither can be cancelled.
#[test]
fn failed_attempts_are_retried_inside_the_windows_and_failed_tasks_are_readable() {
    let redis = Redis::start();
    let backend = Backend::start();
    let policies = format!(
        r#"{{"kinds": {{
            "flaky": {{"windows": ["1/1s", "3/6s"], "target": "{}"}},
            "later": {{"windows": ["5/1s"], "target": "{}"}},
            "gone": {{"windows": ["5/1s"], "target": "{}"}},
            "down": {{"windows": ["5/1s"], "target": "{}", "attempts": 2}}}}}}"#,
        backend.url("/flaky/2"),
        backend.url("/retry-after/3"),
        backend.url("/status/404"),
        backend.url("/status/503"),
    );
    let hosts = replicas(&redis, &backend, &policies, 3);
    let (flaky, _) = submit(&hosts[0], r#"{"user_id":"ann","kind":"flaky"}"#);
    let (flaky2, _) = submit(&hosts[1], r#"{"user_id":"ann","kind":"flaky"}"#);
    let (later, _) = submit(&hosts[2], r#"{"user_id":"bob","kind":"later"}"#);
    let (gone, _) = submit(&hosts[0], r#"{"user_id":"cy","kind":"gone"}"#);
    let (down, _) = submit(&hosts[1], r#"{"user_id":"dee","kind":"down"}"#);
    // 3 + 3 (flaky), 2 (later), 1 (gone), 2 (down).
    let arrived = backend.wait_for(11, Duration::from_secs(40));
    assert_eq!(arrived.len(), 11, "{arrived:#?}\n{}", stall_report(&redis, &hosts));
    let of = |id: &str| -> Vec<&Recorded> { arrived.iter().filter(|r| r.header("webhook-id") == Some(id)).collect() };

    for id in [&flaky, &flaky2] {
        let tries = of(id);
        let attempts: Vec<i64> = tries.iter().map(|r| envelope(r)["attempt"].as_i64().unwrap_or(0)).collect();
        assert_eq!(attempts, [1, 2, 3], "{id}");
        // At least the backoff: 1 s after the first failure, 2 s after the second.
        assert!(tries[1].at_ms - tries[0].at_ms >= 1_000.0 - ARRIVAL_TOLERANCE_MS, "{tries:#?}");
        assert!(tries[2].at_ms - tries[1].at_ms >= 2_000.0 - ARRIVAL_TOLERANCE_MS, "{tries:#?}");
    }
    // Retries are starts the windows count: all six arrivals of ann's lane keep 1/1s and 3/6s.
    let ann: Vec<&Recorded> = of(&flaky).into_iter().chain(of(&flaky2)).collect();
    let broken = window_breaks(&ann, &[(1, 1_000.0), (3, 6_000.0)], ARRIVAL_TOLERANCE_MS, |_| "ann".into());
    assert!(broken.is_empty(), "{broken:#?}");
    let later_tries = of(&later);
    assert!(
        later_tries[1].at_ms - later_tries[0].at_ms >= 3_000.0 - ARRIVAL_TOLERANCE_MS,
        "Retry-After: {later_tries:#?}"
    );

    wait_until(
        Duration::from_secs(10),
        || "every task ended".into(),
        || {
            [&flaky, &flaky2, &later].iter().all(|id| task(&hosts[0], id)["status"] == "completed")
                && [&gone, &down].iter().all(|id| task(&hosts[0], id)["status"] == "failed")
        },
    );
    let gone_task = task(&hosts[1], &gone);
    assert_eq!(gone_task["attempts"].as_array().map(|a| a.len()), Some(1), "{gone_task}");
    assert_eq!(gone_task["attempts"][0]["status"], 404, "{gone_task}");
    let down_task = task(&hosts[2], &down);
    let statuses: Vec<i64> =
        down_task["attempts"].as_array().into_iter().flatten().filter_map(|a| a["status"].as_i64()).collect();
    assert_eq!(statuses, [503, 503], "{down_task}");
    assert!(down_task["failed_at"].is_i64(), "{down_task}");
    let flaky_task = task(&hosts[0], &flaky);
    assert_eq!(flaky_task["attempts"].as_array().map(|a| a.len()), Some(3), "{flaky_task}");
    let cancel = request(&hosts[0].addr, "DELETE", &format!("/api/v1/task/{gone}"), &[], b"");
    assert_eq!(cancel.status, 409, "{}", cancel.body);

    let metrics = hosts[0].get("/metrics").body;
    for line in [
        r#"task_api_kind_deliveries_total{kind="gone",outcome="failed"} 1"#,
        r#"task_api_kind_deliveries_total{kind="down",outcome="retried"} 1"#,
        r#"task_api_kind_deliveries_total{kind="flaky",outcome="retried"} 4"#,
        r#"task_api_kind_deliveries_total{kind="flaky",outcome="delivered"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let entries = read_log(&hosts[0]);
    let expected: Vec<String> = [&flaky, &flaky2, &later, &gone, &down].iter().map(|s| s.to_string()).collect();
    let report = check::check(&entries, check::Rule::default(), Some(&expected));
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!((report.attempts, report.failed), (11, 2), "{}", report.summary());
}

/// `concurrency` bounds a lane's attempts in flight, and a backend that never answers holds
/// only its own lanes: another kind's tasks still start at their slots.
#[test]
fn concurrency_holds_and_a_hanging_backend_delays_only_its_own_lanes() {
    let redis = Redis::start();
    let backend = Backend::start();
    let policies = format!(
        r#"{{"kinds": {{
            "slow": {{"windows": ["10/1s"], "target": "{}", "concurrency": 2}},
            "hang": {{"windows": ["10/1s"], "target": "{}", "timeout": "1s", "attempts": 2}},
            "mail": {{"windows": ["1/1s"], "target": "{}"}}}}}}"#,
        backend.url("/slow/400"),
        backend.url("/hang"),
        backend.url("/ok"),
    );
    let hosts = replicas(&redis, &backend, &policies, 3);
    let slow: Vec<String> = (0..6).map(|i| submit(&hosts[i % 3], r#"{"user_id":"ann","kind":"slow"}"#).0).collect();
    for u in 0..6 {
        submit(&hosts[u % 3], &format!(r#"{{"user_id":"h{u}","kind":"hang"}}"#));
    }
    let mut mail: HashMap<String, i64> = HashMap::new();
    for round in 0..3 {
        for u in 0..4 {
            let (id, slot) = submit(&hosts[(round + u) % 3], &format!(r#"{{"user_id":"m{u}","kind":"mail"}}"#));
            mail.insert(id, slot);
        }
    }
    wait_until(
        Duration::from_secs(20),
        || "slow and mail tasks delivered".into(),
        || {
            let got = backend.requests();
            let count = |path: &str| got.iter().filter(|r| r.path == path).count();
            count("/slow/400") >= slow.len() && count("/ok") >= mail.len()
        },
    );
    let got = backend.requests();
    // The hanging kind was tried meanwhile (and times out after 1 s).
    assert!(got.iter().any(|r| r.path == "/hang"), "the hanging backend was called");
    let lateness: Vec<f64> = got
        .iter()
        .filter(|r| r.path == "/ok")
        .map(|r| r.at_ms - mail[r.header("webhook-id").unwrap_or_default()] as f64)
        .collect();
    let worst = lateness.iter().copied().fold(f64::MIN, f64::max);
    println!("deliveries: the on-time kind arrived at most {worst:.1} ms after its slot while another kind hung");
    assert!(worst < 200.0, "a mail task arrived {worst:.1} ms after its slot: {lateness:?}");
    // At most 2 of ann's slow requests were at the backend at once: each holds it 400 ms.
    let mut starts: Vec<f64> = got.iter().filter(|r| r.path == "/slow/400").map(|r| r.at_ms).collect();
    starts.sort_by(f64::total_cmp);
    for (i, t) in starts.iter().enumerate().skip(2) {
        assert!(t - starts[i - 2] >= 400.0 - ARRIVAL_TOLERANCE_MS, "3 slow requests within 400 ms: {starts:?}");
    }
    wait_until(
        Duration::from_secs(10),
        || "slow tasks completed".into(),
        || slow.iter().all(|id| task(&hosts[0], id)["status"] == "completed"),
    );
    let entries = read_log(&hosts[1]);
    let report = check::check_with_concurrency(
        &entries,
        check::Rule::default(),
        None,
        &BTreeMap::from([("slow".to_string(), 2)]),
    );
    assert!(report.is_clean(), "{}", report.problems());
}

/// Every replica killed with SIGKILL while attempts are in flight: fresh replicas retry each
/// lapsed attempt with the same `webhook-id` and the next attempt number, and every
/// acknowledged task completes. The fresh replicas start after the lease has lapsed with
/// nobody to hear it, and get no probe: a client polling its tasks is the only request, and
/// that alone must wake a drainer (Spin has no timer trigger). The drainers' alarms are
/// deleted at the kill, as on a Redis that refuses keyspace events, so that they cannot.
#[test]
fn replicas_killed_mid_delivery_lose_nothing() {
    let redis = Redis::start();
    let backend = Backend::start();
    let policies = format!(
        r#"{{"kinds": {{"slow": {{"windows": ["1/1s"], "target": "{}", "timeout": "2s"}}}}}}"#,
        backend.url("/slow/1500")
    );
    let mut hosts = replicas(&redis, &backend, &policies, 3);
    let ids: Vec<String> =
        (0..6).map(|u| submit(&hosts[u % 3], &format!(r#"{{"user_id":"k{u}","kind":"slow"}}"#)).0).collect();
    // Some attempts reached the backend, whose answers (after 1.5 s) will never be read.
    let first = backend.wait_for(1, Duration::from_secs(10));
    assert!(!first.is_empty(), "no delivery started");
    let killed_at = Instant::now();
    for host in &mut hosts {
        host.kill();
    }
    let in_flight_when_killed: Vec<String> =
        backend.requests().iter().filter_map(|r| r.header("webhook-id").map(str::to_string)).collect();
    for s in ALARM_SECONDS {
        let () = redis.query(&["DEL", &app_key(&alarm_word(s))]);
    }
    redis.wait_for_the_lease_to_lapse();
    let fresh = replicas(&redis, &backend, &policies, 2);
    wait_until(
        Duration::from_secs(40),
        || "every task completed after the kill".into(),
        || ids.iter().enumerate().all(|(i, id)| task(&fresh[i % 2], id)["status"] == "completed"),
    );
    println!(
        "deliveries: all {} tasks completed {:.1} s after every replica was killed",
        ids.len(),
        killed_at.elapsed().as_secs_f64()
    );
    let got = backend.requests();
    for id in &in_flight_when_killed {
        let attempts: Vec<i64> = got
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id.as_str()))
            .map(|r| envelope(r)["attempt"].as_i64().unwrap_or(0))
            .collect();
        assert!(attempts.len() >= 2 && attempts.windows(2).all(|w| w[1] > w[0]), "{id}: attempts {attempts:?}");
    }
    let entries = read_log(&fresh[0]);
    let report = check::check(&entries, check::Rule::default(), Some(&ids));
    assert!(report.is_clean(), "{}", report.problems());
}

/// A delivery configuration that cannot work is refused at load, every request answered with a
/// problem that names the cause: a target `delivery_hosts` does not allow, the `kv` ledger with
/// a target, a secret not in the `whsec_` form, a timeout out of range.
#[test]
fn bad_delivery_configurations_are_refused_with_the_cause_named() {
    let redis = Redis::start();
    let kind = r#"{"kinds": {"mail": {"windows": ["1/1s"], "target": "http://127.0.0.1:9/x"}}}"#;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("policies", kind), ("delivery_hosts", "http://10.0.0.1:9")], r#"kinds.mail.target "http://127.0.0.1:9/x""#),
        (&[("policies", kind), ("delivery_hosts", "http://127.0.0.1:9"), ("ledger", "kv")], "ledger = redis"),
        (
            &[
                (
                    "policies",
                    r#"{"kinds": {"mail": {"windows": [], "target": "http://127.0.0.1:9/x", "timeout": "90s"}}}"#,
                ),
                ("delivery_hosts", "http://127.0.0.1:9"),
            ],
            "kinds.mail.timeout",
        ),
        (
            &[("policies", kind), ("delivery_hosts", "http://127.0.0.1:9"), ("delivery_secret", "hunter2")],
            "delivery_secret",
        ),
    ];
    for (variables, says) in cases {
        let options = HostOptions {
            variables: variables.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            ..HostOptions::default()
        };
        let host = Host::start(&redis, &options);
        // The secret is the drainer's alone: the API refuses the others, the drainer says why.
        if variables.iter().any(|(n, _)| *n == "delivery_secret") {
            let _ = host.post_task(r#"{"user_id":"a","kind":"mail"}"#);
            wait_until(
                Duration::from_secs(10),
                || format!("the drainer names {says:?}: {}", host.stderr_text()),
                || {
                    let _ = redis.try_query::<i64>(&["PUBLISH", &app_key(word::TICK), ""]);
                    host.stderr_text().contains(says)
                },
            );
            assert!(!host.stderr_text().contains("hunter2"), "the secret is never repeated");
            continue;
        }
        let reply = host.post_task(r#"{"user_id":"a","kind":"mail"}"#);
        assert_eq!(reply.status, 500, "{variables:?}: {}", reply.body);
        let detail = reply.json()["detail"].as_str().unwrap_or_default().to_string();
        assert!(detail.contains(says), "{variables:?}: {detail}");
    }
}

/// The value README.md's `export NAME='value'` line gives.
fn readme_export(readme: &str, name: &str) -> String {
    readme
        .lines()
        .find_map(|line| line.strip_prefix(&format!("export {name}='")))
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("README.md exports no {name}"))
        .to_string()
}

/// A child process killed (SIGKILL) on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// README "Deliveries" as a user runs it: its Python backend (the block as printed, on a free
/// port instead of 8080) under the stock `standardwebhooks`, the app with the README's kind,
/// hosts and secret, and its curl's body. The backend verifies the signature and prints the
/// task id and the envelope, payload as sent; the task completes.
#[test]
fn the_readmes_backend_verifies_and_prints_a_delivery() {
    let readme =
        std::fs::read_to_string(support::repo_root().join("README.md")).unwrap_or_else(|e| panic!("README.md: {e}"));
    let code = readme
        .split("A backend in Python")
        .nth(1)
        .and_then(|rest| rest.split("```python\n").nth(1))
        .and_then(|block| block.split("\n```").next())
        .unwrap_or_else(|| panic!("no Python block after \"A backend in Python\" in README.md"));
    let port = support::free_loopback_port().to_string();
    let on_port = |text: &str| {
        assert!(text.contains("8080"), "the README's port moved: {text}");
        text.replace("8080", &port)
    };
    let secret = readme_export(&readme, "SPIN_VARIABLE_DELIVERY_SECRET");
    let python = support::repo_root().join("target/webhooks-venv/bin/python");
    assert!(python.exists(), "{} is missing: runtime-tests/test.sh installs it", python.display());
    let mut backend = Killed(
        Command::new(python)
            .args(["-c", &on_port(code)])
            .env("DELIVERY_SECRET", &secret)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python: {e}")),
    );
    let (lines, printed) = std::sync::mpsc::channel();
    if let Some(out) = backend.0.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
    }
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(err) = backend.0.stderr.take() {
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                stderr.lock().unwrap_or_else(PoisonError::into_inner).push_str(&format!("{line}\n"));
            }
        });
    }
    let said = || stderr.lock().unwrap_or_else(PoisonError::into_inner).clone();
    wait_until(
        Duration::from_secs(20),
        || format!("the README's backend listening on {port}; it said:\n{}", said()),
        || std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok(),
    );
    let redis = Redis::start();
    let options = HostOptions {
        variables: vec![
            ("policies".into(), on_port(&readme_export(&readme, "SPIN_VARIABLE_POLICIES"))),
            ("delivery_hosts".into(), on_port(&readme_export(&readme, "SPIN_VARIABLE_DELIVERY_HOSTS"))),
            ("delivery_secret".into(), secret.clone()),
        ],
        ..HostOptions::default()
    };
    let host = Host::start(&redis, &options);
    let (id, _) = submit(&host, r#"{"user_id":"123","kind":"mail","payload":{"to":"ann@example.com"}}"#);
    let line = printed.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|e| {
        panic!("the backend printed nothing ({e}); it said:\n{}\nthe host said:\n{}", said(), host.stderr_text())
    });
    let (printed_id, envelope) = line.split_once(' ').unwrap_or_else(|| panic!("the backend printed {line:?}"));
    assert_eq!(printed_id, id, "{line}");
    let envelope: serde_json::Value = serde_json::from_str(envelope).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        (&envelope["task_id"], &envelope["user_id"], &envelope["kind"], &envelope["attempt"]),
        (&serde_json::json!(id), &serde_json::json!("123"), &serde_json::json!("mail"), &serde_json::json!(1)),
        "{line}"
    );
    assert_eq!(envelope["payload"], serde_json::json!({"to": "ann@example.com"}), "{line}");
    wait_until(
        Duration::from_secs(10),
        || format!("task {id} completed: {}", task(&host, &id)),
        || task(&host, &id)["status"] == "completed",
    );
}

/// A task to deliver whose slot is now starts at its admission: the answer (202) says
/// `running` since the start the windows count, the replica that admitted it makes that
/// attempt (attempt 1 reaches the backend within the arrival tolerance of the start; had the
/// handler not made it, only a drainer's attempt 2 would, after the claim lapsed), and the
/// task completes with that start as its first attempt's. The lane's next task, a second
/// later, is queued for the drainers and reaches the backend no earlier than its slot.
#[test]
fn a_task_due_at_admission_starts_there_and_its_admitter_delivers_it() {
    let redis = Redis::start();
    let backend = Backend::start();
    let policies = format!(r#"{{"kinds": {{"mail": {{"windows": ["1/1s"], "target": "{}"}}}}}}"#, backend.url("/ok"));
    let hosts = replicas(&redis, &backend, &policies, 1);
    let first = hosts[0].post_task(r#"{"user_id":"ann","kind":"mail"}"#);
    assert_eq!(first.status, 202, "{}", first.body);
    let answer = first.json();
    let (id, slot) = (answer["task_id"].as_str().unwrap_or_default().to_string(), answer["slot"].as_i64());
    assert_eq!(answer["status"], "running", "{answer}");
    let since = answer["running_since"].as_i64().unwrap_or_else(|| panic!("no running_since: {answer}"));
    assert_eq!(slot, Some(since), "{answer}");
    assert_eq!(first.header("location"), Some(format!("/api/v1/task/{id}").as_str()));
    let (second, second_slot) = submit(&hosts[0], r#"{"user_id":"ann","kind":"mail"}"#);
    assert_eq!(task(&hosts[0], &second)["status"], "queued");
    assert!(second_slot >= since + 1_000, "second slot {second_slot}, first started {since}");

    let arrived = backend.wait_for(2, Duration::from_secs(20));
    assert_eq!(arrived.len(), 2, "{}", stall_report(&redis, &hosts));
    let of = |task_id: &str| arrived.iter().find(|r| r.header("webhook-id") == Some(task_id)).cloned();
    let Some(made) = of(&id) else { panic!("the first task never arrived: {arrived:?}") };
    assert_eq!(envelope(&made)["attempt"], 1);
    // (Redis's clock counts whole ms: its start may read up to 1 ms before the true instant.)
    let lag = made.at_ms - since as f64;
    assert!((-1.0..ARRIVAL_TOLERANCE_MS).contains(&lag), "attempt 1 reached the backend {lag:.1} ms after its start");
    let Some(next) = of(&second) else { panic!("the second task never arrived: {arrived:?}") };
    assert!(next.at_ms >= second_slot as f64 - 1.0, "the second task arrived before its slot");

    wait_until(
        Duration::from_secs(10),
        || "both tasks completed".into(),
        || [&id, &second].iter().all(|t| task(&hosts[0], t)["status"] == "completed"),
    );
    assert_eq!(task(&hosts[0], &id)["attempts"][0]["started_at"].as_i64(), Some(since));
    // Every attempt an admission started has been counted off again.
    let started: Option<i64> = redis.query(&["GET", &app_key(word::STARTED)]);
    assert_eq!(started, None);
    let report = check::check(&read_log(&hosts[0]), check::Rule::default(), Some(&[id, second]));
    assert!(report.is_clean(), "{}", report.problems());
}

/// At most `ADMISSION_STARTS_MAX` first attempts that admissions started are in flight at
/// once, across the replicas: to a backend that never answers, exactly that many admissions
/// of a burst from three replicas answer `running`, the others are queued for the drainers,
/// and once every attempt has timed out the count is back to nothing.
#[test]
fn admissions_start_at_most_their_share_of_attempts_at_once() {
    let redis = Redis::start();
    let backend = Backend::start();
    let policies = format!(
        r#"{{"kinds": {{"stuck": {{"windows": ["1/1s"], "target": "{}", "timeout": "5s", "attempts": 1}}}}}}"#,
        backend.url("/hang")
    );
    let hosts = replicas(&redis, &backend, &policies, 3);
    let cap = ADMISSION_STARTS_MAX as usize;
    let total = cap + 24;
    let addrs: Vec<String> = hosts.iter().map(|h| h.addr.clone()).collect();
    let answers: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..16 {
            let (addrs, answers, next) = (&addrs, answers.clone(), next.clone());
            scope.spawn(move || {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    let body = format!(r#"{{"user_id":"u{n}","kind":"stuck"}}"#);
                    let reply = request(
                        &addrs[n % addrs.len()],
                        "POST",
                        "/api/v1/task",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    );
                    assert_eq!(reply.status, 202, "{}", reply.body);
                    let json = reply.json();
                    let answer = (json["task_id"].as_str().unwrap_or_default().to_string(), json["status"].to_string());
                    answers.lock().unwrap_or_else(PoisonError::into_inner).push(answer);
                }
            });
        }
    });
    let answers = answers.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let running = answers.iter().filter(|(_, status)| status == "\"running\"").count();
    assert_eq!((running, answers.len()), (cap, total), "{answers:?}");
    assert!(answers.iter().all(|(_, status)| status == "\"running\"" || status == "\"queued\""), "{answers:?}");
    let started: Option<i64> = redis.query(&["GET", &app_key(word::STARTED)]);
    assert_eq!(started, Some(cap as i64), "admissions' attempts in flight");
    wait_until(
        Duration::from_secs(40),
        || "every attempt timed out and its task failed".into(),
        || answers.iter().all(|(id, _)| task(&hosts[0], id)["status"] == "failed"),
    );
    let started: Option<i64> = redis.query(&["GET", &app_key(word::STARTED)]);
    assert_eq!(started, None);
}
