//! Workers that pull (README "Workers that pull"), end to end: three replicas on one Redis and
//! real worker processes, the README's own `examples/worker.py`, each polling a replica. The
//! windows and `concurrency` are checked on the log's claim starts by the log checker, and a
//! worker killed with claims in hand must lose nothing.

use crate::support;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Host, HostOptions, Redis, check, read_log, request, wait_until};

/// A pulled kind: one claim a second and three in any 4 s per user, one attempt of a lane in
/// hand at once, and a claim held 1 s (it lapses 5 s after that without an outcome).
const POLICIES: &str =
    r#"{"kinds": {"render": {"windows": ["1/1s", "3/4s"], "pull": true, "timeout": "1s", "concurrency": 1}}}"#;
const JSON: [(&str, &str); 1] = [("Content-Type", "application/json")];

fn replicas(redis: &Redis, count: usize) -> Vec<Host> {
    let options = HostOptions { variables: vec![("policies".into(), POLICIES.into())], ..HostOptions::default() };
    (0..count).map(|_| Host::start(redis, &options)).collect()
}

/// `examples/worker.py` against one replica, its stdout (one claimed task per line) gathered.
struct Worker {
    child: Child,
    claims: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Worker {
    fn start(host: &Host, work_seconds: &str) -> Worker {
        let mut child = Command::new("python3")
            .arg(support::repo_root().join("examples/worker.py"))
            .args([format!("http://{}", host.addr), "render".to_string()])
            .env("WORK_SECONDS", work_seconds)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 examples/worker.py: {e}"));
        let claims = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let claims = claims.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(task) = serde_json::from_str(&line) {
                        claims.lock().unwrap_or_else(|e| e.into_inner()).push(task);
                    }
                }
            });
        }
        Worker { child, claims }
    }

    fn claims(&self) -> Vec<serde_json::Value> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(host: &Host, path: &str, body: &str) -> support::Reply {
    request(&host.addr, "POST", path, &JSON, body.as_bytes())
}

fn task(host: &Host, id: &str) -> serde_json::Value {
    let reply = host.get(&format!("/api/v1/task/{id}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn submit(host: &Host, user: &str) -> (String, i64) {
    let reply = post(host, "/api/v1/task", &format!(r#"{{"user_id":"{user}","kind":"render"}}"#));
    assert_eq!(reply.status, 202, "{}", reply.body);
    let json = reply.json();
    (json["task_id"].as_str().unwrap_or_default().to_string(), json["slot"].as_i64().unwrap_or_default())
}

/// Worker processes on three replicas take every task exactly once, within the windows and
/// `concurrency` (checked on the claim starts the log records), never before its slot; the
/// worker killed with a claim in hand loses nothing: its claim lapses and another worker
/// completes the task on attempt 2.
#[test]
fn workers_on_three_replicas_hold_the_windows_and_a_killed_one_loses_nothing() {
    let redis = Redis::start();
    let hosts = replicas(&redis, 3);
    // The first worker works on what it claims for 10 minutes: it is killed holding it.
    let mut doomed = Worker::start(&hosts[0], "600");
    let (held, _) = submit(&hosts[0], "zed");
    wait_until(
        Duration::from_secs(10),
        || "the doomed worker claims".into(),
        || task(&hosts[1], &held)["status"] == "running",
    );
    let _ = doomed.child.kill();
    let _ = doomed.child.wait();

    let mut slots: HashMap<String, i64> = HashMap::new();
    for round in 0..4 {
        for (u, user) in ["ann", "bob", "ché", "dee"].iter().enumerate() {
            let (id, slot) = submit(&hosts[(round + u) % 3], user);
            slots.insert(id, slot);
        }
    }
    let workers: Vec<Worker> = (0..3).map(|i| Worker::start(&hosts[i], "0.05")).collect();
    let mut all: Vec<String> = slots.keys().cloned().collect();
    all.push(held.clone());
    // 4 tasks a user take 5 s by the windows; the held claim lapses 6 s after it began.
    wait_until(
        Duration::from_secs(40),
        || {
            format!(
                "every task completed: {:?}",
                all.iter().map(|id| task(&hosts[1], id)["status"].clone()).collect::<Vec<_>>()
            )
        },
        || all.iter().all(|id| task(&hosts[1], id)["status"] == "completed"),
    );

    let claimed: Vec<serde_json::Value> = workers.iter().flat_map(|w| w.claims()).collect();
    // Each task's attempt was printed by one worker only, and never before its slot.
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for c in &claimed {
        let id = c["task_id"].as_str().unwrap_or_default().to_string();
        *seen.entry((id.clone(), c["attempt"].as_i64().unwrap_or(0))).or_default() += 1;
        let (started, slot) = (c["started_at"].as_i64().unwrap_or(0), c["slot"].as_i64().unwrap_or(i64::MAX));
        assert!(started >= slot, "claimed {started} before its slot {slot}: {c}");
    }
    assert!(seen.values().all(|n| *n == 1), "an attempt claimed twice: {seen:?}");
    // The held task: attempt 1 lapsed, attempt 2 completed by a live worker.
    let record = task(&hosts[2], &held);
    assert_eq!(record["attempts"][0]["error"], "lapsed", "{record}");
    assert!(seen.contains_key(&(held.clone(), 2)), "attempt 2 of {held} was not claimed by a live worker: {seen:?}");
    for id in slots.keys() {
        assert_eq!(
            task(&hosts[0], id)["attempts"].as_array().map(Vec::len),
            Some(1),
            "{id} took more than one attempt"
        );
    }

    // The log: every task once, the windows on the claim starts, one attempt in hand per lane.
    let entries = read_log(&hosts[0]);
    let report = check::check_with_concurrency(
        &entries,
        check::Rule::default(),
        Some(&all),
        &BTreeMap::from([("render".to_string(), 1)]),
    );
    assert!(report.is_clean() && report.in_flight.is_empty(), "{}\n{:#?}", report.summary(), report.in_flight);
    assert_eq!(report.attempts, all.len() + 1, "{}", report.summary());
}

/// A long poll answers when a task falls due: at once for a task admitted while it waits (the
/// bell), at the slot for one due later, and with an empty list when nothing falls due.
#[test]
fn long_polls_answer_when_a_task_falls_due() {
    let redis = Redis::start();
    let hosts = replicas(&redis, 2);
    let claim = |host: &Host, wait: &str| {
        let began = Instant::now();
        let reply = post(host, "/api/v1/claims", &format!(r#"{{"kind":"render","max":5,"wait":"{wait}"}}"#));
        assert_eq!(reply.status, 200, "{}", reply.body);
        (reply.json()["claims"].as_array().cloned().unwrap_or_default(), began.elapsed())
    };
    // Nothing queued: the poll waits out its wait.
    let (none, waited) = claim(&hosts[0], "1s");
    assert!(none.is_empty() && waited >= Duration::from_millis(950), "{none:?} after {waited:?}");

    // Admitted on another replica while the poll waits: claimed at once. (The tolerances are
    // loose for a loaded 2-core machine; what matters is that the poll did not wait out 10 s.)
    let poll = {
        let addr = hosts[0].addr.clone();
        std::thread::spawn(move || {
            let began = Instant::now();
            let reply = request(&addr, "POST", "/api/v1/claims", &JSON, br#"{"kind":"render","wait":"10s"}"#);
            (reply.json(), began.elapsed())
        })
    };
    // (Not a synchronisation: had the poll not begun waiting yet, it would claim the task at
    // once all the same. It makes the case the bell's.)
    std::thread::sleep(Duration::from_millis(300));
    let admitted = Instant::now();
    let (first, first_slot) = submit(&hosts[1], "eve");
    let (answer, _) = poll.join().unwrap_or_else(|_| panic!("the poll thread panicked"));
    let after_admission = admitted.elapsed();
    assert_eq!(answer["claims"][0]["task_id"], first.as_str(), "{answer}");
    assert!(after_admission < Duration::from_secs(1), "answered {after_admission:?} after the admission");
    let started = answer["claims"][0]["started_at"].as_i64().unwrap_or(0);
    assert!(started >= first_slot && started - first_slot < 200, "started {started}, slot {first_slot}");
    report(&hosts[0], &answer["claims"][0], "completed");

    // The user's next task is due a second after the first one's start: the poll answers then.
    let (second, second_slot) = submit(&hosts[1], "eve");
    let (got, waited) = claim(&hosts[0], "5s");
    assert_eq!(got.first().map(|c| c["task_id"].clone()), Some(second.clone().into()), "{got:?}");
    let started = got[0]["started_at"].as_i64().unwrap_or(0);
    assert!(started >= second_slot, "claimed at {started}, before its slot {second_slot}");
    assert!(started - second_slot < 200, "claimed {} ms after its slot", started - second_slot);
    assert!(waited > Duration::from_millis(500) && waited < Duration::from_millis(1_500), "waited {waited:?}");
}

fn report(host: &Host, claim: &serde_json::Value, body_rest: &str) -> support::Reply {
    let id = claim["task_id"].as_str().unwrap_or_default();
    let token = claim["claim"].as_str().unwrap_or_default();
    let body = if body_rest.starts_with('{') {
        body_rest.replacen('{', &format!(r#"{{"claim":"{token}","#), 1)
    } else {
        format!(r#"{{"claim":"{token}","result":"{body_rest}"}}"#)
    };
    post(host, &format!("/api/v1/task/{id}/outcome"), &body)
}

/// Outcomes: `retry` re-admits at a later slot (the worker's `retry_after`) and the next claim
/// is attempt 2; `failed` fails the task, readable with its attempts and the detail as sent;
/// a reported or foreign claim is 409; bad bodies and kinds that are not pulled are 400; a
/// retry after the last attempt fails the task.
#[test]
fn outcomes_retry_fail_and_refuse_stale_claims() {
    let redis = Redis::start();
    let options = HostOptions {
        variables: vec![(
            "policies".into(),
            r#"{"kinds": {"render": {"windows": [], "pull": true, "attempts": 2}, "mail": ["1/1s"]}}"#.into(),
        )],
        ..HostOptions::default()
    };
    let host = Host::start(&redis, &options);
    let (a, _) = submit(&host, "ann");
    let (b, _) = submit(&host, "bob");
    let got = post(&host, "/api/v1/claims", r#"{"kind":"render","max":2}"#).json();
    let claims = got["claims"].as_array().cloned().unwrap_or_default();
    assert_eq!(claims.len(), 2, "{got}");
    let (ca, cb) = if claims[0]["task_id"] == a.as_str() { (&claims[0], &claims[1]) } else { (&claims[1], &claims[0]) };
    assert_eq!(cb["task_id"], b.as_str());

    // Another task's token, then a retry with retry_after.
    let foreign = post(
        &host,
        &format!("/api/v1/task/{a}/outcome"),
        &format!(r#"{{"claim":"{}","result":"completed"}}"#, cb["claim"].as_str().unwrap_or_default()),
    );
    assert_eq!(foreign.status, 409, "{}", foreign.body);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let retried = report(&host, ca, r#"{"result":"retry","retry_after":"2s","detail":{"why":"busy"}}"#);
    assert_eq!((retried.status, retried.json()["status"].as_str()), (200, Some("queued")), "{}", retried.body);
    let slot = retried.json()["slot"].as_i64().unwrap_or(0);
    assert!(slot >= before + 2_000 - 50, "retry slot {slot} is not 2 s after {before}");
    assert_eq!(report(&host, ca, "completed").status, 409, "a reported claim");

    // The detail as sent, byte for byte, and `failed`.
    let detail = r#"{"b":1,"a":[1.50,"é"]}"#;
    let failed = report(&host, cb, &format!(r#"{{"result":"failed","detail":{detail}}}"#));
    assert_eq!(failed.json()["status"], "failed", "{}", failed.body);
    let record = host.get(&format!("/api/v1/task/{b}"));
    assert!(record.body.contains(&format!(r#""detail":{detail}"#)), "{}", record.body);
    assert_eq!(record.json()["attempts"][0]["result"], "failed", "{}", record.body);

    // The retried task's second claim is attempt 2; a retry then is its last: failed.
    let again = post(&host, "/api/v1/claims", r#"{"kind":"render","wait":"5s"}"#).json();
    assert_eq!(
        (again["claims"][0]["task_id"].as_str(), again["claims"][0]["attempt"].as_i64()),
        (Some(a.as_str()), Some(2)),
        "{again}"
    );
    let last = report(&host, &again["claims"][0], "retry");
    assert_eq!(last.json()["status"], "failed", "{}", last.body);

    for (path, body) in [
        ("/api/v1/claims", r#"{"kind":"mail"}"#),
        ("/api/v1/claims", r#"{"kind":"nope"}"#),
        ("/api/v1/claims", r#"{"kind":"render","max":101}"#),
        ("/api/v1/claims", r#"{"kind":"render","wait":"1h"}"#),
        ("/api/v1/claims", "[]"),
        (&format!("/api/v1/task/{a}/outcome") as &str, r#"{"claim":"x","result":"done"}"#),
        (&format!("/api/v1/task/{a}/outcome") as &str, r#"{"result":"completed"}"#),
    ] {
        let reply = post(&host, path, body);
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
        assert!(reply.json()["detail"].is_string(), "{}", reply.body);
    }
    let metrics = host.get("/metrics").body;
    for line in [
        "task_api_kind_claims_total{kind=\"render\"} 3",
        "task_api_kind_deliveries_total{kind=\"render\",outcome=\"retried\"} 1",
        "task_api_kind_deliveries_total{kind=\"render\",outcome=\"failed\"} 2",
        "task_api_stale_outcomes_total 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} is not in /metrics:\n{metrics}");
    }
}

/// Worker keys under `auth = api_key`: a worker key claims and reports its kinds only, acts
/// for no user, and a user's key may not claim; the admin token may.
#[test]
fn worker_keys_claim_their_kinds_only() {
    let redis = Redis::start();
    let admin = "workers-admin-token";
    let policies = r#"{"kinds": {"render": {"windows": [], "pull": true}, "ocr": {"windows": [], "pull": true}}}"#;
    let options = HostOptions {
        variables: vec![
            ("auth".into(), "api_key".into()),
            ("admin_token".into(), admin.into()),
            ("policies".into(), policies.into()),
        ],
        ..HostOptions::default()
    };
    let host = Host::start(&redis, &options);
    let as_admin = format!("Bearer {admin}");
    let make = |body: &str| {
        let reply = request(
            &host.addr,
            "POST",
            "/api/v1/keys",
            &[("Content-Type", "application/json"), ("Authorization", &as_admin)],
            body.as_bytes(),
        );
        assert_eq!(reply.status, 201, "{body}: {}", reply.body);
        format!("Bearer {}", reply.json()["key"].as_str().unwrap_or_default())
    };
    let worker = make(r#"{"worker":true,"kinds":["render"]}"#);
    let user = make(r#"{"user_id":"ann"}"#);
    let refused = request(
        &host.addr,
        "POST",
        "/api/v1/keys",
        &[("Content-Type", "application/json"), ("Authorization", &as_admin)],
        br#"{"worker":true,"kinds":["default"]}"#,
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    let call = |bearer: &str, path: &str, body: &str| {
        request(
            &host.addr,
            "POST",
            path,
            &[("Content-Type", "application/json"), ("Authorization", bearer)],
            body.as_bytes(),
        )
    };
    let made = call(&user, "/api/v1/task", r#"{"kind":"render"}"#);
    assert_eq!(made.status, 202, "{}", made.body);
    let id = made.json()["task_id"].as_str().unwrap_or_default().to_string();

    assert_eq!(call(&user, "/api/v1/claims", r#"{"kind":"render"}"#).status, 403);
    assert_eq!(call(&worker, "/api/v1/claims", r#"{"kind":"ocr"}"#).status, 403);
    assert_eq!(call(&worker, "/api/v1/task", r#"{"user_id":"ann"}"#).status, 403);
    let got = call(&worker, "/api/v1/claims", r#"{"kind":"render"}"#);
    assert_eq!((got.status, got.json()["claims"][0]["task_id"].as_str()), (200, Some(id.as_str())), "{}", got.body);
    let token = got.json()["claims"][0]["claim"].as_str().unwrap_or_default().to_string();
    let done = format!(r#"{{"claim":"{token}","result":"completed"}}"#);
    assert_eq!(call(&user, &format!("/api/v1/task/{id}/outcome"), &done).status, 403);
    let read = request(&host.addr, "GET", &format!("/api/v1/task/{id}"), &[("Authorization", &worker)], b"");
    assert_eq!(read.status, 404, "a worker key reads no task: {}", read.body);
    assert_eq!(call(&worker, &format!("/api/v1/task/{id}/outcome"), &done).status, 200);
    assert_eq!(call(&as_admin, "/api/v1/claims", r#"{"kind":"ocr"}"#).status, 200);
    assert_eq!(call("Bearer nope", "/api/v1/claims", r#"{"kind":"render"}"#).status, 401);
}
