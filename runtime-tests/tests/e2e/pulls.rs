//! Pulled kinds end to end (README "Workers that pull"): real `redis-server`, real host
//! replicas, and real worker processes — the README's own `examples/worker.py`, several of
//! them, each polling a replica over loopback. What the workers print (each claimed task, as
//! the app answered it) is held to the windows, `concurrency` and the slots, and so is the
//! app's log (the log checker); a worker SIGKILLed with claims in hand must lose nothing;
//! long polls must answer at a slot, at a bell, and after their wait; outcomes, worker keys
//! and `/metrics` are checked against what each test did.

use crate::support;
use runtime_tests::check::{Outcome, PulledResult};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Host, HostOptions, Redis, Reply, check, read_log, request, wait_until};

const JSON: [(&str, &str); 1] = [("Content-Type", "application/json")];

/// How long after the instant the rule allows it a claim may start (`started_at`, Redis's
/// clock). A long poll waiting for a slot sleeps until the soonest lane may start, on the
/// host's timer, then runs one script that claims on Redis's clock; a bell wakes a `BLPOP`
/// on another connection, then the same script. Both take a few ms on an idle machine; 100 ms
/// leaves room for a loaded 2-core machine running other tests' replicas beside these (the
/// host's timer and the wakeup wait for a core), while a poll that missed the slot or the
/// bell would be late by its whole wait (seconds). Never *before* that instant: no slack.
const CLAIM_TOLERANCE_MS: i64 = 100;

/// How long after that instant the long poll's HTTP answer may reach the test: the claim's
/// lateness above, plus the answer's way back through the host and loopback (a few ms idle;
/// more when the cores are busy).
const ANSWER_TOLERANCE_MS: i64 = 300;

/// How long after the bell (a task admitted due at once, or an outcome that frees a lane's
/// place) a waiting poll may answer, on the test's clock from before the request that rings
/// it: that request's own admission or report (tens of ms on loaded cores), the wakeup and
/// the claim. Without the bell the poll would answer only at the end of its 10 s wait.
const BELL_TOLERANCE: Duration = Duration::from_millis(500);

/// Epoch milliseconds on this machine's clock, the one Redis's `TIME` reads too (`slot`,
/// `started_at` and `deadline` are on it): the test's instants compare with the app's.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn replicas(redis: &Redis, policies: &str, count: usize) -> Vec<Host> {
    let options = HostOptions { variables: vec![("policies".into(), policies.into())], ..HostOptions::default() };
    (0..count).map(|_| Host::start(redis, &options)).collect()
}

/// `examples/worker.py` polling one replica for one kind: what it prints (each claimed task,
/// one JSON line, printed after its work and before its outcome is reported) and what it
/// says on stderr (a refused outcome: `<task id> 409 <problem>`; a traceback) are gathered,
/// with any stdout line that is not JSON among the latter. Killed (SIGKILL) on drop.
struct Worker {
    child: Child,
    printed: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(host: &Host, kind: &str, work_seconds: &str, key: Option<&str>) -> Worker {
        let mut command = Command::new("python3");
        command
            .arg(support::repo_root().join("examples/worker.py"))
            .args([format!("http://{}", host.addr), kind.to_string()])
            .env("WORK_SECONDS", work_seconds)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match key {
            Some(key) => command.env("WORKER_KEY", key),
            None => command.env_remove("WORKER_KEY"),
        };
        let mut child = command.spawn().unwrap_or_else(|e| panic!("python3 examples/worker.py: {e}"));
        let printed = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let (printed, noise) = (printed.clone(), stderr.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    match serde_json::from_str(&line) {
                        Ok(task) => printed.lock().unwrap_or_else(PoisonError::into_inner).push(task),
                        // Kept with stderr, which the tests expect empty.
                        Err(e) => {
                            noise.lock().unwrap_or_else(PoisonError::into_inner).push(format!("stdout ({e}): {line}"))
                        }
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    stderr.lock().unwrap_or_else(PoisonError::into_inner).push(line);
                }
            });
        }
        Worker { child, printed, stderr }
    }

    fn printed(&self) -> Vec<Value> {
        self.printed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).join("\n")
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn post(host: &Host, path: &str, body: &str) -> Reply {
    request(&host.addr, "POST", path, &JSON, body.as_bytes())
}

/// Submits a task of a pulled kind: always queued (202), even when due now. Its id and slot.
fn submit(host: &Host, user: &str, kind: &str, payload: Option<&str>) -> (String, i64) {
    let body = match payload {
        Some(p) => format!(r#"{{"user_id":"{user}","kind":"{kind}","payload":{p}}}"#),
        None => format!(r#"{{"user_id":"{user}","kind":"{kind}"}}"#),
    };
    let reply = post(host, "/api/v1/task", &body);
    assert_eq!(reply.status, 202, "{body}: {}", reply.body);
    let json = reply.json();
    assert_eq!(json["status"], "queued", "{}", reply.body);
    (text(&json["task_id"]), json["slot"].as_i64().unwrap_or_else(|| panic!("no slot: {}", reply.body)))
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("{value} is not a string")).to_string()
}

fn whole(value: &Value) -> i64 {
    value.as_i64().unwrap_or_else(|| panic!("{value} is not a whole number"))
}

fn task(host: &Host, id: &str) -> Value {
    let reply = host.get(&format!("/api/v1/task/{id}"));
    assert_eq!(reply.status, 200, "GET task {id}: {}", reply.body);
    reply.json()
}

/// `POST /api/v1/claims` with `body`; must be 200. The claims.
fn claim(host: &Host, body: &str) -> Vec<Value> {
    let reply = post(host, "/api/v1/claims", body);
    assert_eq!(reply.status, 200, "claims {body}: {}", reply.body);
    claims_of(&reply)
}

fn claims_of(reply: &Reply) -> Vec<Value> {
    reply.json()["claims"].as_array().cloned().unwrap_or_else(|| panic!("no claims list: {}", reply.body))
}

/// Reports the outcome of `claimed` (a claim as the app answered it): `rest` is the body's
/// other fields, such as `"result":"completed"`.
fn report(host: &Host, claimed: &Value, rest: &str) -> Reply {
    report_with(host, &text(&claimed["task_id"]), &text(&claimed["claim"]), rest)
}

fn report_with(host: &Host, task_id: &str, token: &str, rest: &str) -> Reply {
    post(host, &format!("/api/v1/task/{task_id}/outcome"), &format!(r#"{{"claim":"{token}",{rest}}}"#))
}

/// Every way one lane's claim starts break `windows` ((quota, window ms), each start 1 unit):
/// quota + 1 starts within `(t - w, t]`. Exact: the starts are all on Redis's clock.
fn window_breaks(lane: &str, starts: &[i64], windows: &[(usize, i64)]) -> Vec<String> {
    let mut sorted = starts.to_vec();
    sorted.sort_unstable();
    let mut broken = Vec::new();
    for &(quota, window_ms) in windows {
        for i in quota..sorted.len() {
            if sorted[i] - sorted[i - quota] < window_ms {
                broken.push(format!(
                    "{lane}: {} starts within {} ms ({} .. {}), over {quota} per {window_ms} ms",
                    quota + 1,
                    sorted[i] - sorted[i - quota],
                    sorted[i - quota],
                    sorted[i]
                ));
            }
        }
    }
    broken
}

/// The value of one series (`name{labels}` exactly as exposed) in a `/metrics` body.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// How many long polls wait on a bell now: clients blocked (`flags` with `b`) in `BLPOP`, as
/// claims.rs waits.
fn polls_waiting(redis: &Redis) -> usize {
    let clients: String = redis.query(&["CLIENT", "LIST"]);
    let blocked = |l: &str| {
        let fields: Vec<&str> = l.split(' ').collect();
        fields.contains(&"cmd=blpop")
            && fields.iter().any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('b')))
    };
    clients.lines().filter(|l| blocked(l)).count()
}

/// Every claim printed by `workers`, keyed by (task id, attempt), failing on an attempt that
/// was printed twice (claimed by two workers, or twice by one).
fn printed_once(workers: &[&Worker]) -> BTreeMap<(String, i64), Value> {
    let mut seen: BTreeMap<(String, i64), Value> = BTreeMap::new();
    for worker in workers {
        for claimed in worker.printed() {
            let key = (text(&claimed["task_id"]), whole(&claimed["attempt"]));
            if let Some(before) = seen.insert(key.clone(), claimed.clone()) {
                panic!("attempt {key:?} was claimed twice:\n{before}\n{claimed}");
            }
        }
    }
    seen
}

/// A policy of two pulled kinds: `render` one claim a second and three in any 4 s per user,
/// one attempt in hand at once; `batch` three a second, two in hand at once.
const CROWD: &str = r#"{"kinds": {
    "render": {"windows": ["1/1s", "3/4s"], "pull": true, "concurrency": 1},
    "batch": {"windows": ["3/1s"], "pull": true, "concurrency": 2}}}"#;

/// Six `examples/worker.py` processes (four for `render`, two for `batch`) on three replicas
/// take 48 tasks of 9 users: each attempt is claimed by one worker only and every task
/// completes once, with its payload as sent; no claim starts before its slot; the windows
/// hold on the claim starts the workers printed and on those the log records (the same
/// instants), and `concurrency` holds on the log's attempts (the log checker). The tasks are
/// all queued before the workers start, so a worker's first poll claims many lanes at once
/// and works through them one by one: lanes wait on `concurrency`, which the test checks it
/// did exercise.
#[test]
fn worker_processes_on_three_replicas_take_each_task_once_within_the_windows_and_concurrency() {
    let redis = Redis::start();
    let hosts = replicas(&redis, CROWD, 3);
    // id → (user, kind, slot, payload)
    let mut sent: HashMap<String, (String, &str, i64, String)> = HashMap::new();
    let render_users = ["ann", "bob", "ché", "dee", "eli", "fay"];
    for round in 0..5 {
        for (u, user) in render_users.iter().enumerate() {
            let payload = format!(r#"{{"frame":{round},"who":"{user}","scale":1.50}}"#);
            let (id, slot) = submit(&hosts[(round + u) % 3], user, "render", Some(&payload));
            sent.insert(id, (user.to_string(), "render", slot, payload));
        }
    }
    for round in 0..6 {
        for (u, user) in ["gus", "hal", "ivy"].iter().enumerate() {
            let payload = format!("[{round},\"{user}\"]");
            let (id, slot) = submit(&hosts[(round + u + 1) % 3], user, "batch", Some(&payload));
            sent.insert(id, (user.to_string(), "batch", slot, payload));
        }
    }
    let ids: Vec<String> = sent.keys().cloned().collect();

    // 0.25 s of work a task: a worker that claimed six lanes holds the last for 1.5 s, past
    // its lane's next slot.
    let render: Vec<Worker> = (0..4).map(|i| Worker::start(&hosts[i % 3], "render", "0.25", None)).collect();
    let batch: Vec<Worker> = (0..2).map(|i| Worker::start(&hosts[(i + 1) % 3], "batch", "0.25", None)).collect();
    let workers: Vec<&Worker> = render.iter().chain(batch.iter()).collect();
    // Each render lane's 5 tasks take 5 s by the windows, longer where a lane waits on its
    // place; one log entry per ended attempt.
    wait_until(
        Duration::from_secs(45),
        || {
            let printed: Vec<usize> = workers.iter().map(|w| w.printed().len()).collect();
            format!("{} of {} tasks logged; printed per worker {printed:?}", redis.log_len(), ids.len())
        },
        || redis.log_len() >= ids.len(),
    );

    // What the workers printed: each attempt once, every task, attempt 1, as admitted.
    let printed = printed_once(&workers);
    let printed_ids: HashSet<&str> = printed.keys().map(|(id, _)| id.as_str()).collect();
    assert_eq!(printed_ids.len(), ids.len(), "tasks printed: {} of {}", printed_ids.len(), ids.len());
    for worker in &render {
        assert!(worker.printed().iter().all(|c| c["kind"] == "render"), "a render worker got another kind");
    }
    for worker in &batch {
        assert!(worker.printed().iter().all(|c| c["kind"] == "batch"), "a batch worker got another kind");
    }
    let mut starts: BTreeMap<(String, &str), Vec<i64>> = BTreeMap::new();
    for ((id, attempt), claimed) in &printed {
        let (user, kind, slot, payload) = sent.get(id).unwrap_or_else(|| panic!("a task never submitted: {claimed}"));
        assert_eq!(*attempt, 1, "a retried attempt: {claimed}");
        assert_eq!((claimed["user_id"].as_str(), claimed["kind"].as_str()), (Some(user.as_str()), Some(*kind)));
        assert_eq!(whole(&claimed["slot"]), *slot, "{claimed}");
        let expected: Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{payload}: {e}"));
        assert_eq!(claimed["payload"], expected, "the payload as sent");
        let started = whole(&claimed["started_at"]);
        assert!(started >= *slot, "claimed at {started}, before its slot {slot}: {claimed}");
        // Default timeout: 10 s.
        assert_eq!(whole(&claimed["deadline"]), started + 10_000, "{claimed}");
        starts.entry((user.clone(), kind)).or_default().push(started);
    }
    let mut broken = Vec::new();
    for ((user, kind), lane) in &starts {
        let windows: &[(usize, i64)] = if *kind == "render" { &[(1, 1_000), (3, 4_000)] } else { &[(3, 1_000)] };
        broken.extend(window_breaks(&format!("{user}/{kind}"), lane, windows));
    }
    assert!(broken.is_empty(), "windows broken on the printed claim starts: {broken:#?}");
    for worker in &workers {
        assert_eq!(worker.stderr(), "", "a worker was refused an outcome, failed, or printed what is not JSON");
    }

    // Every task completed, once, on one attempt.
    for id in &ids {
        let record = task(&hosts[1], id);
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(record["attempts"].as_array().map(Vec::len), Some(1), "{record}");
        assert_eq!(record["attempts"][0]["result"], "completed", "{record}");
    }

    // The log: one entry per task, at the start the worker saw, the windows on the starts
    // and no lane over its concurrency.
    let entries = read_log(&hosts[2]);
    assert_eq!(entries.len(), ids.len(), "one entry per attempt");
    for entry in &entries {
        let id = entry.task_id.clone().unwrap_or_default();
        let claimed = printed.get(&(id.clone(), 1)).unwrap_or_else(|| panic!("logged but never printed: {entry:?}"));
        assert_eq!(entry.started_at, claimed["started_at"].as_i64(), "{id}: the log's start is not the claim's");
        assert_eq!((entry.attempt, entry.result, entry.outcome), (Some(1), Some(PulledResult::Completed), None));
        assert!(entry.status.is_none() && entry.error.is_none(), "{entry:?}");
    }
    let bounds: BTreeMap<String, usize> = [("render".to_string(), 1), ("batch".to_string(), 2)].into();
    let report = check::check_with_concurrency(&entries, check::Rule::default(), Some(&ids), &bounds);
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!((report.attempts, report.retries, report.failed), (ids.len(), 0, 0), "{}", report.summary());

    // The bounds were reached, so they were tested: a batch lane had two attempts in flight
    // at once (a bound of 1 would be broken), and a render lane was still busy at its next
    // task's slot (which therefore started only after that outcome: the checker's bound).
    let tighter: BTreeMap<String, usize> = [("batch".to_string(), 1)].into();
    let doubled = check::check_with_concurrency(&entries, check::Rule::default(), None, &tighter);
    assert!(!doubled.in_flight.is_empty(), "no batch lane ever had two attempts in flight");
    let mut lanes: BTreeMap<(&str, &str), Vec<&check::Entry>> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.kind == "render") {
        lanes.entry((&entry.user_id, &entry.kind)).or_default().push(entry);
    }
    let mut held_back = 0;
    for lane in lanes.values_mut() {
        lane.sort_by_key(|e| e.started_at);
        held_back += lane.windows(2).filter(|w| w[0].completed_at > w[1].slot.unwrap_or(i64::MAX)).count();
    }
    assert!(held_back > 0, "no render task waited on its lane's concurrency: the test did not exercise it");
    println!("pulls: {} tasks, {held_back} render claims waited on concurrency; {}", ids.len(), report.summary());
}

/// Two pulled kinds whose claims are held 1 s (and lapse 5 s after that without an outcome),
/// the second with one place a lane.
const LAPSING: &str = r#"{"kinds": {
    "render": {"windows": ["1/1s", "3/4s"], "pull": true, "timeout": "1s"},
    "ocr": {"windows": [], "pull": true, "timeout": "1s", "concurrency": 1}}}"#;

/// A worker SIGKILLed with claims in hand loses nothing: its three claims lapse no sooner
/// than their deadline plus 5 s, and live worker processes on other replicas complete those
/// tasks on attempt 2 (the lapsed attempt 1 readable as `"error": "lapsed"`), after the 1 s
/// backoff, beside the other tasks, which complete on attempt 1; nothing is completed twice
/// and the windows count the lapsed starts too. A claim held past its lapse is stale: its
/// outcome is refused (409), the lapse frees the lane's one place for the task behind, and
/// the task's next claim is attempt 2.
#[test]
fn a_worker_killed_with_claims_in_hand_loses_nothing_its_claims_lapse_and_are_retried() {
    let redis = Redis::start();
    let hosts = replicas(&redis, LAPSING, 3);
    let users = ["ann", "bob", "cy"];
    let mut ids = Vec::new();
    for round in 0..3 {
        for (u, user) in users.iter().enumerate() {
            ids.push(submit(&hosts[(round + u) % 3], user, "render", None).0);
        }
    }
    // Its work takes 30 s: it claims the three lane heads due now and sits on them.
    let mut doomed = Worker::start(&hosts[0], "render", "30", None);
    let running =
        || -> Vec<String> { ids.iter().filter(|id| task(&hosts[1], id)["status"] == "running").cloned().collect() };
    wait_until(
        Duration::from_secs(15),
        || format!("the doomed worker holds 3 claims: running {:?}", running()),
        || running().len() == 3,
    );
    let held = running();
    let status = doomed.kill().unwrap_or_else(|| panic!("the doomed worker could not be reaped"));
    assert!(!status.success(), "the doomed worker was killed: {status:?}");
    assert!(doomed.printed().is_empty(), "the doomed worker finished a task: {:?}", doomed.printed());

    // The test holds a claim of its own past its lapse, in a lane of one place: the lapse
    // must free the place for the task queued behind.
    let (scan, _) = submit(&hosts[1], "dee", "ocr", None);
    let (behind, _) = submit(&hosts[2], "dee", "ocr", None);
    let mine = claim(&hosts[2], r#"{"kind":"ocr","max":5}"#);
    assert_eq!(mine.len(), 1, "one place, one claim: {mine:?}");
    assert_eq!(mine[0]["task_id"].as_str(), Some(scan.as_str()), "{}", mine[0]);
    let deadline = whole(&mine[0]["deadline"]);
    assert_eq!(deadline, whole(&mine[0]["started_at"]) + 1_000, "timeout 1s: {}", mine[0]);

    let live: Vec<Worker> = (1..3).map(|i| Worker::start(&hosts[i], "render", "0.05", None)).collect();
    wait_until(
        Duration::from_secs(20),
        || format!("the test's own claim lapses: {}", task(&hosts[0], &scan)),
        || task(&hosts[0], &scan)["attempts"][0]["error"] == "lapsed",
    );
    let stale = report(&hosts[0], &mine[0], r#""result":"completed""#);
    assert_eq!(stale.status, 409, "an outcome for a lapsed claim: {}", stale.body);
    assert_eq!(stale.json()["status"], 409, "{}", stale.body);
    // The place is free: the task behind first (the retried one went behind it).
    let freed = claim(&hosts[1], r#"{"kind":"ocr","wait":"5s"}"#);
    assert_eq!(freed.len(), 1, "{freed:?}");
    assert_eq!((freed[0]["task_id"].as_str(), whole(&freed[0]["attempt"])), (Some(behind.as_str()), 1));
    let done = report(&hosts[0], &freed[0], r#""result":"completed""#);
    assert_eq!(done.status, 200, "{}", done.body);
    let again = claim(&hosts[1], r#"{"kind":"ocr","wait":"5s"}"#);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0]["task_id"].as_str(), whole(&again[0]["attempt"])), (Some(scan.as_str()), 2), "{}", again[0]);
    assert!(whole(&again[0]["started_at"]) >= whole(&again[0]["slot"]), "{}", again[0]);
    let done = report(&hosts[2], &again[0], r#""result":"completed""#);
    assert_eq!((done.status, done.json()["status"].as_str()), (200, Some("completed")), "{}", done.body);

    // The lapse comes 6 s after the claims and the retry 1 s after that.
    wait_until(
        Duration::from_secs(30),
        || format!("every render task completed: {:?}", ids.iter().map(|id| task(&hosts[0], id)["status"].clone())),
        || ids.iter().all(|id| task(&hosts[0], id)["status"] == "completed"),
    );

    let workers: Vec<&Worker> = live.iter().collect();
    let printed = printed_once(&workers);
    for worker in &workers {
        assert_eq!(worker.stderr(), "", "a live worker was refused an outcome, failed, or printed what is not JSON");
    }
    let entries = read_log(&hosts[1]);
    let lapsed: HashMap<String, &check::Entry> = entries
        .iter()
        .filter(|e| e.error.as_deref() == Some("lapsed"))
        .map(|e| (e.task_id.clone().unwrap_or_default(), e))
        .collect();
    let mut lapsed_ids: Vec<&String> = lapsed.keys().collect();
    lapsed_ids.sort();
    let mut expected_lapsed: Vec<&String> = held.iter().chain([&scan]).collect();
    expected_lapsed.sort();
    assert_eq!(lapsed_ids, expected_lapsed, "the lapsed attempts are the held claims'");
    for (id, entry) in &lapsed {
        let started = entry.started_at.unwrap_or_else(|| panic!("{entry:?}"));
        assert_eq!((entry.attempt, entry.outcome, entry.result), (Some(1), Some(Outcome::Retry), None), "{entry:?}");
        // Never before deadline (start + 1 s) + the 5 s margin.
        assert!(
            entry.completed_at >= started + 6_000,
            "{id} lapsed {} ms after its claim",
            entry.completed_at - started
        );
    }
    for id in &ids {
        let record = task(&hosts[2], id);
        let attempts = record["attempts"].as_array().cloned().unwrap_or_default();
        if held.contains(id) {
            assert_eq!(attempts.len(), 2, "{record}");
            assert_eq!(attempts[0]["error"], "lapsed", "{record}");
            assert_eq!(attempts[1]["result"], "completed", "{record}");
            assert!(!printed.contains_key(&(id.clone(), 1)), "{id}'s lapsed attempt was also completed: {printed:?}");
            let second = printed.get(&(id.clone(), 2)).unwrap_or_else(|| panic!("{id}: attempt 2 never printed"));
            let lapse = lapsed[id].completed_at;
            let (slot, started) = (whole(&second["slot"]), whole(&second["started_at"]));
            assert!(slot >= lapse + 1_000, "{id}: retried at {slot}, less than 1 s after its lapse at {lapse}");
            assert!(started >= slot, "{id}: attempt 2 claimed at {started}, before its slot {slot}");
            assert_eq!(whole(&attempts[1]["started_at"]), started, "{record}");
        } else {
            assert_eq!(attempts.len(), 1, "{record}");
            assert_eq!(attempts[0]["result"], "completed", "{record}");
            assert!(printed.contains_key(&(id.clone(), 1)), "{id}: never printed");
        }
    }
    assert_eq!(printed.len(), ids.len(), "one printed attempt per task: {:?}", printed.keys());

    let mut expected = ids.clone();
    expected.extend([scan.clone(), behind.clone()]);
    // The lapsed claim held ocr's one place until it lapsed: no overlap with the next claim.
    let one: BTreeMap<String, usize> = [("ocr".to_string(), 1)].into();
    let report = check::check_with_concurrency(&entries, check::Rule::default(), Some(&expected), &one);
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!((report.attempts, report.retries, report.failed), (15, 4, 0), "{}", report.summary());

    let metrics = hosts[0].get("/metrics").body;
    for (series, value) in [
        ("task_api_lapsed_claims_total", 4.0),
        ("task_api_stale_outcomes_total", 1.0),
        (r#"task_api_kind_claims_total{kind="render"}"#, 12.0),
        (r#"task_api_kind_claims_total{kind="ocr"}"#, 3.0),
        (r#"task_api_kind_deliveries_total{kind="render",outcome="delivered"}"#, 9.0),
        (r#"task_api_kind_deliveries_total{kind="render",outcome="retried"}"#, 3.0),
    ] {
        assert_eq!(metric(&metrics, series), Some(value), "{series} in\n{metrics}");
    }
}

/// A pulled kind of one claim a second per user, and one of one attempt in hand at once.
const POLLED: &str = r#"{"kinds": {
    "render": {"windows": ["1/1s"], "pull": true},
    "solo": {"windows": [], "pull": true, "concurrency": 1}}}"#;

/// Runs a long poll on `host` in a thread once it is seen waiting on a bell; `then` rings it
/// (or not). The reply and when it came.
fn poll_while(redis: &Redis, host: &Host, body: &'static str, then: impl FnOnce()) -> (Reply, Instant) {
    let waiting_before = polls_waiting(redis);
    let addr = host.addr.clone();
    let poll = std::thread::spawn(move || {
        let reply = request(&addr, "POST", "/api/v1/claims", &JSON, body.as_bytes());
        (reply, Instant::now())
    });
    wait_until(
        Duration::from_secs(10),
        || format!("the poll {body} waits on its bell"),
        || poll.is_finished() || polls_waiting(redis) > waiting_before,
    );
    then();
    poll.join().unwrap_or_else(|_| panic!("the poll {body} panicked"))
}

/// Long polls: one with nothing queued answers `{"claims": []}` after its wait, not before;
/// one waiting when a task is admitted on another replica, due at once, answers with it at
/// once (the bell); one waiting when an outcome frees a lane's only place answers with the
/// lane's next task at once; and one made while the only task is due a second later answers
/// with it at its slot: the claim's start never before, and within 100 ms after, and the
/// answer soon after.
#[test]
fn long_polls_answer_at_the_bell_at_the_slot_and_after_their_wait() {
    let redis = Redis::start();
    let hosts = replicas(&redis, POLLED, 2);

    // Nothing queued: empty at once without a wait, and after the wait with one.
    let quick = post(&hosts[0], "/api/v1/claims", r#"{"kind":"render"}"#);
    assert_eq!((quick.status, claims_of(&quick).len()), (200, 0), "{}", quick.body);
    assert!(quick.elapsed < Duration::from_secs(1), "a claim without a wait took {:?}", quick.elapsed);
    let waited = post(&hosts[0], "/api/v1/claims", r#"{"kind":"render","wait":"2s"}"#);
    assert_eq!((waited.status, claims_of(&waited).len()), (200, 0), "{}", waited.body);
    // The app's timer starts after the request has arrived, so the test sees at least the
    // wait; the answer's way back may add some (loaded cores).
    assert!(
        waited.elapsed >= Duration::from_millis(2_000) && waited.elapsed < Duration::from_millis(2_700),
        "a 2 s wait answered after {:?}",
        waited.elapsed
    );

    // The bell: a task admitted on the other replica while the poll waits.
    let mut rang = (Instant::now(), String::new(), 0);
    let (reply, answered) = poll_while(&redis, &hosts[0], r#"{"kind":"render","wait":"10s"}"#, || {
        let before = Instant::now();
        let (id, slot) = submit(&hosts[1], "eve", "render", Some(r#"{"n":1}"#));
        rang = (before, id, slot);
    });
    let (admitted, eve, eve_slot) = rang;
    let claimed = the_one_claim(&reply, &eve, eve_slot, "its slot");
    let after = answered.duration_since(admitted);
    assert!(after < BELL_TOLERANCE, "the poll answered {after:?} after the admission");
    let reported = report(&hosts[1], &claimed, r#""result":"completed""#);
    assert_eq!(reported.status, 200, "{}", reported.body);

    // An outcome's bell: `solo`'s lane has one place; its second task waits for the first's
    // outcome, reported on the other replica while the poll waits.
    let (first, _) = submit(&hosts[0], "gil", "solo", None);
    let (second, _) = submit(&hosts[1], "gil", "solo", None);
    let held = claim(&hosts[1], r#"{"kind":"solo","max":5}"#);
    assert_eq!(held.len(), 1, "one place, one claim: {held:?}");
    assert_eq!(held[0]["task_id"].as_str(), Some(first.as_str()));
    let mut freed = (Instant::now(), 0);
    let (reply, answered) = poll_while(&redis, &hosts[0], r#"{"kind":"solo","max":5,"wait":"10s"}"#, || {
        let before = Instant::now();
        let done = report(&hosts[1], &held[0], r#""result":"completed""#);
        assert_eq!(done.status, 200, "{}", done.body);
        freed = (before, whole(&done.json()["completed_at"]));
    });
    let (reported_at, completed_at) = freed;
    the_one_claim(&reply, &second, completed_at, "the first's outcome freed the only place");
    let after = answered.duration_since(reported_at);
    assert!(after < BELL_TOLERANCE, "the poll answered {after:?} after the outcome");

    // At the slot: fay's first task starts now, so her second may start a second later
    // (1/1s counts claim starts), and a poll made now waits for that instant.
    let (one, _) = submit(&hosts[1], "fay", "render", None);
    let got = claim(&hosts[0], r#"{"kind":"render"}"#);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["task_id"].as_str(), Some(one.as_str()));
    let first_start = whole(&got[0]["started_at"]);
    let reported = report(&hosts[1], &got[0], r#""result":"completed""#);
    assert_eq!(reported.status, 200, "{}", reported.body);
    let (two, two_slot) = submit(&hosts[1], "fay", "render", None);
    // The instant the rule allows it: its slot, and a second after the first claim's start
    // (the slot was reckoned at admission from the first task's slot; a claim a ms after
    // that slot moves the second's start a ms past its own slot).
    let due = two_slot.max(first_start + 1_000);
    let asked = now_ms();
    assert!(due - asked > 300, "the test is too slow to see a poll wait: due {} ms after asking", due - asked);
    let reply = post(&hosts[0], "/api/v1/claims", r#"{"kind":"render","wait":"5s"}"#);
    let answered = now_ms();
    let claimed = the_one_claim(&reply, &two, due, "the instant the rule allows it");
    assert_eq!(whole(&claimed["attempt"]), 1, "{claimed}");
    let started = whole(&claimed["started_at"]);
    assert!(answered >= due, "answered at {answered}, before the slot {due}");
    assert!(answered - due <= ANSWER_TOLERANCE_MS, "answered {} ms after its slot", answered - due);
    println!("pulls: the poll at a slot claimed {} ms and answered {} ms after it", started - due, answered - due);
}

/// The one claim a poll answered with: of task `id`, its start (Redis's clock) no earlier than
/// `earliest` (`what`: that instant, for the message) and within `CLAIM_TOLERANCE_MS` of it.
fn the_one_claim(reply: &Reply, id: &str, earliest: i64, what: &str) -> Value {
    let claims = claims_of(reply);
    assert_eq!(claims.len(), 1, "{}", reply.body);
    assert_eq!(claims[0]["task_id"].as_str(), Some(id), "{}", reply.body);
    let started = whole(&claims[0]["started_at"]);
    assert!(started >= earliest, "claimed at {started}, before {what} at {earliest}");
    assert!(started - earliest <= CLAIM_TOLERANCE_MS, "claimed {} ms after {what}", started - earliest);
    claims[0].clone()
}

/// Two polls wait for a kind on one replica, each for one task (`max` 1), when two users'
/// tasks are admitted on another replica one after the other, both due at once, while the
/// waiting replica is too busy to run anything (paused with SIGSTOP for the two admissions,
/// so that what a loaded replica does now and then happens on every run): when it runs
/// again, each poll must answer with one of the two at once, not one at once and the other
/// at the end of its 10 s wait.
#[test]
fn polls_waiting_together_each_answer_at_once_when_tasks_fall_due_together() {
    let redis = Redis::start();
    let hosts = replicas(&redis, POLLED, 2);
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let addr = hosts[0].addr.clone();
            std::thread::spawn(move || {
                let reply =
                    request(&addr, "POST", "/api/v1/claims", &JSON, br#"{"kind":"render","max":1,"wait":"10s"}"#);
                (reply, Instant::now())
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        || format!("both polls wait on the bell: {} waiting", polls_waiting(&redis)),
        || polls_waiting(&redis) >= 2,
    );
    hosts[0].signal("-STOP");
    let (first, _) = submit(&hosts[1], "pia", "render", None);
    let (second, _) = submit(&hosts[1], "quinn", "render", None);
    let resumed = Instant::now();
    hosts[0].signal("-CONT");
    let mut got = Vec::new();
    for poll in polls {
        let (reply, answered) = poll.join().unwrap_or_else(|_| panic!("a poll thread panicked"));
        let claims = claims_of(&reply);
        assert_eq!(claims.len(), 1, "{}", reply.body);
        got.push((text(&claims[0]["task_id"]), answered.duration_since(resumed)));
    }
    got.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), expected, "{got:?}");
    for (id, after) in &got {
        assert!(
            *after < BELL_TOLERANCE,
            "the poll that took {id} answered {after:?} after its replica resumed: {got:?}"
        );
    }
}

/// One pulled kind of up to 3 attempts without windows, and one that is not pulled.
const OUTCOMES: &str = r#"{"kinds": {
    "render": {"windows": [], "pull": true, "attempts": 3},
    "mail": ["1/1s"]}}"#;

/// Outcomes on two replicas: `retry` with `retry_after` re-admits the task at report time +
/// retry_after (and without it after the backoff, 1 s then 2 s), and its next claim is attempt
/// 2; `failed` fails it, readable with `failed_at`, its attempts and the detail as sent byte
/// for byte (in the task and in the log); a reported claim and another task's token are 409;
/// a `retry` on the last attempt fails the task; bad bodies are 400 with a problem body, an
/// unknown task 404, and claims for a kind that is unknown or not pulled 400.
#[test]
fn outcomes_retry_later_fail_with_their_detail_and_refuse_stale_claims() {
    let redis = Redis::start();
    let hosts = replicas(&redis, OUTCOMES, 2);
    let payload = r#"{"n":1.50,"s":"é","deep":[null,true]}"#;
    let (a, _) = submit(&hosts[0], "ann", "render", Some(payload));
    let (b, _) = submit(&hosts[1], "bob", "render", None);
    let (c, _) = submit(&hosts[0], "cy", "render", None);
    let reply = post(&hosts[1], "/api/v1/claims", r#"{"kind":"render","max":3}"#);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains(&format!(r#""payload":{payload}"#)), "the payload as sent: {}", reply.body);
    let claims: HashMap<String, Value> = claims_of(&reply).into_iter().map(|c| (text(&c["task_id"]), c)).collect();
    assert_eq!(claims.len(), 3, "{}", reply.body);
    let (ca, cb, cc) = (&claims[&a], &claims[&b], &claims[&c]);
    assert!(claims.values().all(|c| c["attempt"] == 1), "{}", reply.body);
    assert!(claims.values().all(|c| c["claim"].as_str().is_some_and(|t| !t.is_empty())), "{}", reply.body);

    // Another task's token.
    let foreign = report_with(&hosts[0], &a, &text(&cc["claim"]), r#""result":"completed""#);
    assert_eq!(foreign.status, 409, "another task's token: {}", foreign.body);

    // Retry after 2 s (more than the first backoff, 1 s): queued at report time + 2 s.
    let before = now_ms();
    let retried = report(&hosts[0], ca, r#""result":"retry","retry_after":"2s","detail":{"why":"busy"}"#);
    let after = now_ms();
    assert_eq!((retried.status, retried.json()["status"].as_str()), (200, Some("queued")), "{}", retried.body);
    let a_slot = whole(&retried.json()["slot"]);
    assert!(
        (before + 2_000..=after + 2_000).contains(&a_slot),
        "retried to {a_slot}, not 2 s after the report ({before}..{after})"
    );
    assert_eq!(report(&hosts[1], ca, r#""result":"completed""#).status, 409, "a claim reported already");
    let record = task(&hosts[1], &a);
    assert_eq!((record["status"].as_str(), record["slot"].as_i64()), (Some("queued"), Some(a_slot)), "{record}");
    assert_eq!(record["attempts"][0]["result"], "retry", "{record}");
    assert_eq!(record["attempts"][0]["started_at"], ca["started_at"], "{record}");
    assert!(record["attempts"][0]["duration_ms"].is_i64(), "{record}");
    assert_eq!(record["detail"], serde_json::json!({"why": "busy"}), "{record}");

    // Retry without retry_after: the first backoff, 1 s.
    let before = now_ms();
    let retried = report(&hosts[1], cc, r#""result":"retry""#);
    let after = now_ms();
    assert_eq!(retried.status, 200, "{}", retried.body);
    let c_slot = whole(&retried.json()["slot"]);
    assert!(
        (before + 1_000..=after + 1_000).contains(&c_slot),
        "retried to {c_slot}, not 1 s after ({before}..{after})"
    );

    // Failed, with a detail kept byte for byte.
    let detail = r#"{"b":1,"a":[1.50,"é","\u00e9"],"z":null}"#;
    let failed = report(&hosts[1], cb, &format!(r#""result":"failed","detail":{detail}"#));
    assert_eq!((failed.status, failed.json()["status"].as_str()), (200, Some("failed")), "{}", failed.body);
    let failed_at = whole(&failed.json()["failed_at"]);
    let record = host_task_raw(&hosts[0], &b);
    assert!(record.contains(&format!(r#""detail":{detail}"#)), "the detail as sent: {record}");
    let record: Value = serde_json::from_str(&record).unwrap_or_else(|e| panic!("{e}: {record}"));
    assert_eq!(
        (record["status"].as_str(), record["failed_at"].as_i64()),
        (Some("failed"), Some(failed_at)),
        "{record}"
    );
    assert_eq!(record["attempts"].as_array().map(Vec::len), Some(1), "{record}");
    assert_eq!(record["attempts"][0]["result"], "failed", "{record}");
    assert_eq!(report(&hosts[0], cb, r#""result":"completed""#).status, 409, "a failed task's claim again");

    // c falls due first (1 s), then a (2 s): each claim is attempt 2, not before its slot.
    let next = claim(&hosts[0], r#"{"kind":"render","max":5,"wait":"5s"}"#);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!((next[0]["task_id"].as_str(), whole(&next[0]["attempt"])), (Some(c.as_str()), 2), "{}", next[0]);
    assert!(whole(&next[0]["started_at"]) >= c_slot, "{} claimed before its slot {c_slot}", next[0]);
    let done = report(&hosts[1], &next[0], r#""result":"completed""#);
    assert_eq!((done.status, done.json()["status"].as_str()), (200, Some("completed")), "{}", done.body);
    let record = task(&hosts[0], &c);
    let results: Vec<&Value> = record["attempts"].as_array().into_iter().flatten().map(|a| &a["result"]).collect();
    assert_eq!(results, ["retry", "completed"], "{record}");
    assert!(record.get("detail").is_none_or(Value::is_null), "no detail was sent: {record}");

    let next = claim(&hosts[1], r#"{"kind":"render","wait":"5s"}"#);
    assert_eq!((next[0]["task_id"].as_str(), whole(&next[0]["attempt"])), (Some(a.as_str()), 2), "{next:?}");
    assert!(whole(&next[0]["started_at"]) >= a_slot, "{} claimed before its slot {a_slot}", next[0]);
    // The second backoff: 2 s.
    let before = now_ms();
    let retried = report(&hosts[0], &next[0], r#""result":"retry""#);
    let after = now_ms();
    assert_eq!(retried.json()["status"], "queued", "{}", retried.body);
    let a_slot = whole(&retried.json()["slot"]);
    assert!(
        (before + 2_000..=after + 2_000).contains(&a_slot),
        "retried to {a_slot}, not 2 s after ({before}..{after})"
    );
    let last = claim(&hosts[0], r#"{"kind":"render","wait":"5s"}"#);
    assert_eq!((last[0]["task_id"].as_str(), whole(&last[0]["attempt"])), (Some(a.as_str()), 3), "{last:?}");
    // A retry on the last attempt fails the task.
    let end = report(&hosts[1], &last[0], r#""result":"retry","retry_after":"1s""#);
    assert_eq!((end.status, end.json()["status"].as_str()), (200, Some("failed")), "{}", end.body);
    let record = task(&hosts[0], &a);
    let results: Vec<&str> =
        record["attempts"].as_array().into_iter().flatten().filter_map(|a| a["result"].as_str()).collect();
    assert_eq!((record["status"].as_str(), results), (Some("failed"), vec!["retry"; 3]), "{record}");
    assert!(record["failed_at"].is_i64(), "{record}");

    // Bad bodies: 400 with a problem body; nothing is claimed or reported by them.
    let (d, _) = submit(&hosts[0], "dee", "render", None);
    let outcome_path = format!("/api/v1/task/{d}/outcome");
    // A detail is at most 2 KiB.
    let too_long = format!(r#"{{"claim":"x.1","result":"completed","detail":"{}"}}"#, "a".repeat(2_100));
    for (path, body) in [
        ("/api/v1/claims", r#"{"kind":"render","max":0}"#),
        ("/api/v1/claims", r#"{"kind":"render","max":101}"#),
        ("/api/v1/claims", r#"{"kind":"render","max":"1"}"#),
        ("/api/v1/claims", r#"{"kind":"render","wait":"31s"}"#),
        ("/api/v1/claims", r#"{"kind":"render","wait":"soon"}"#),
        ("/api/v1/claims", r#"{"kind":"render","wait":5}"#),
        ("/api/v1/claims", r#"{"kind":"render","extra":1}"#),
        ("/api/v1/claims", "{}"),
        ("/api/v1/claims", "[]"),
        ("/api/v1/claims", "{"),
        ("/api/v1/claims", ""),
        ("/api/v1/claims", r#"{"kind":"mail"}"#),
        ("/api/v1/claims", r#"{"kind":"nope"}"#),
        ("/api/v1/claims", r#"{"kind":"default"}"#),
        (&outcome_path, r#"{"result":"completed"}"#),
        (&outcome_path, r#"{"claim":"","result":"completed"}"#),
        (&outcome_path, r#"{"claim":"x.1"}"#),
        (&outcome_path, r#"{"claim":"x.1","result":"done"}"#),
        (&outcome_path, r#"{"claim":"x.1","result":"completed","retry_after":"5s"}"#),
        (&outcome_path, r#"{"claim":"x.1","result":"retry","retry_after":"later"}"#),
        (&outcome_path, r#"{"claim":"x.1","result":"retry","retry_after":"1441m"}"#),
        (&outcome_path, &too_long),
        (&outcome_path, r#"{"claim":"x.1","result":"completed","extra":1}"#),
        (&outcome_path, "["),
        (&outcome_path, ""),
    ] {
        let reply = post(&hosts[1], path, body);
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/problem+json"), "{path} {body}");
        let problem = reply.json();
        assert!(problem["status"] == 400 && problem["detail"].is_string(), "{path} {body}: {}", reply.body);
        if body.contains("mail") || body.contains("nope") || body.contains("default") {
            assert!(text(&problem["detail"]).contains("not pulled"), "{}", reply.body);
        }
    }
    assert_eq!(task(&hosts[0], &d)["status"], "queued", "a bad request claimed or reported the task");
    let unknown = report_with(&hosts[0], "000000000000000000000000", "x.1", r#""result":"completed""#);
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let malformed = report_with(&hosts[0], "not-a-task", "x.1", r#""result":"completed""#);
    assert_eq!(malformed.status, 404, "{}", malformed.body);

    // The log: every attempt that ended, with the worker's result, and the detail as sent.
    let raw = request(&hosts[1].addr, "GET", "/api/v1/log?limit=1000", &[("Accept", "application/x-ndjson")], b"");
    assert_eq!(raw.status, 200, "{}", raw.body);
    let b_line = raw.body.lines().find(|l| l.contains(&b)).unwrap_or_else(|| panic!("{b} not logged: {}", raw.body));
    assert!(b_line.contains(&format!(r#""detail":{detail}"#)), "the detail as sent in the log: {b_line}");
    let entries = read_log(&hosts[0]);
    let expected = vec![a.clone(), b.clone(), c.clone()];
    let report = check::check(&entries, check::Rule::default(), Some(&expected));
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!((report.attempts, report.retries, report.failed), (6, 3, 2), "{}", report.summary());
    let words: Vec<(u32, Option<PulledResult>, Option<Outcome>)> = entries
        .iter()
        .filter(|e| e.task_id.as_deref() == Some(a.as_str()))
        .map(|e| (e.attempt.unwrap_or(0), e.result, e.outcome))
        .collect();
    let retry = Some(PulledResult::Retry);
    assert_eq!(
        words,
        [(1, retry, Some(Outcome::Retry)), (2, retry, Some(Outcome::Retry)), (3, retry, Some(Outcome::Failed))]
    );
}

/// A task's JSON text as served, to look at bytes.
fn host_task_raw(host: &Host, id: &str) -> String {
    let reply = host.get(&format!("/api/v1/task/{id}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// Under `auth = api_key`: a worker key (made by the admin) claims and reports its kinds
/// only, makes and reads no task; a user's key may not claim or report; the admin token
/// claims any kind; a real `examples/worker.py` with the worker key completes a task, and one
/// given a user's key is refused. Under `auth = none` anyone may claim and report, and a
/// worker without a key completes a task.
#[test]
fn worker_keys_claim_their_kinds_only_and_without_auth_anyone_may_claim() {
    let admin = "pulls-admin-token";
    let policies = r#"{"kinds": {"render": {"windows": [], "pull": true}, "ocr": {"windows": [], "pull": true}}}"#;
    let redis = Redis::start();
    let options = HostOptions {
        variables: vec![
            ("auth".into(), "api_key".into()),
            ("admin_token".into(), admin.into()),
            ("policies".into(), policies.into()),
        ],
        ..HostOptions::default()
    };
    let host = Host::start(&redis, &options);
    let call = |bearer: Option<&str>, path: &str, body: &str| {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        request(&host.addr, "POST", path, &headers, body.as_bytes())
    };
    let make = |body: &str| -> String {
        let reply = call(Some(admin), "/api/v1/keys", body);
        assert_eq!(reply.status, 201, "{body}: {}", reply.body);
        text(&reply.json()["key"])
    };
    let made = call(Some(admin), "/api/v1/keys", r#"{"worker":true,"kinds":["render"]}"#);
    assert_eq!(made.status, 201, "{}", made.body);
    let kinds: Vec<Value> = made.json()["kinds"].as_array().cloned().unwrap_or_default();
    assert_eq!(kinds, ["render"], "{}", made.body);
    assert!(made.json()["key_id"].is_string() && made.json()["created_at"].is_i64(), "{}", made.body);
    let worker = text(&made.json()["key"]);
    let ann = make(r#"{"user_id":"ann"}"#);
    for refused in [r#"{"worker":true,"kinds":["default"]}"#, r#"{"worker":true,"kinds":["nope"]}"#] {
        let reply = call(Some(admin), "/api/v1/keys", refused);
        assert_eq!(reply.status, 400, "a worker key for a kind that is not pulled, {refused}: {}", reply.body);
    }

    let created = |bearer: &str, kind: &str| -> String {
        let reply = call(Some(bearer), "/api/v1/task", &format!(r#"{{"kind":"{kind}"}}"#));
        assert_eq!(reply.status, 202, "{}", reply.body);
        text(&reply.json()["task_id"])
    };
    let render_task = created(&ann, "render");
    let ocr_task = created(&ann, "ocr");

    // Who may claim.
    for (who, bearer, body, status) in [
        ("a user's key", Some(ann.as_str()), r#"{"kind":"render"}"#, 403),
        ("a worker key, another kind", Some(worker.as_str()), r#"{"kind":"ocr"}"#, 403),
        ("no credentials", None, r#"{"kind":"render"}"#, 401),
        ("an unknown key", Some("tk_nope"), r#"{"kind":"render"}"#, 401),
    ] {
        let reply = call(bearer, "/api/v1/claims", body);
        assert_eq!(reply.status, status, "{who} claims {body}: {}", reply.body);
    }
    let made_by_worker = call(Some(&worker), "/api/v1/task", r#"{"user_id":"ann","kind":"render"}"#);
    assert_eq!(made_by_worker.status, 403, "a worker key makes a task: {}", made_by_worker.body);
    let read = request(
        &host.addr,
        "GET",
        &format!("/api/v1/task/{render_task}"),
        &[("Authorization", &format!("Bearer {worker}"))],
        b"",
    );
    assert_eq!(read.status, 404, "a worker key reads no task: {}", read.body);

    // The admin claims the ocr task; the render worker may not report it.
    let by_admin = call(Some(admin), "/api/v1/claims", r#"{"kind":"ocr"}"#);
    assert_eq!(by_admin.status, 200, "{}", by_admin.body);
    let ocr_claim = claims_of(&by_admin);
    assert_eq!(ocr_claim.len(), 1, "{}", by_admin.body);
    assert_eq!(ocr_claim[0]["task_id"].as_str(), Some(ocr_task.as_str()));
    let ocr_done = format!(r#"{{"claim":"{}","result":"completed"}}"#, text(&ocr_claim[0]["claim"]));
    let ocr_path = format!("/api/v1/task/{ocr_task}/outcome");
    assert_eq!(call(Some(&worker), &ocr_path, &ocr_done).status, 403, "a render worker reports an ocr task");
    assert_eq!(call(Some(&ann), &ocr_path, &ocr_done).status, 403, "a user reports an outcome");
    assert_eq!(call(Some(admin), &ocr_path, &ocr_done).status, 200, "the admin reports");

    // A real worker with the render key completes the render task; one with a user's key is
    // refused at its first claim (worker.py stops on an error that is not an outcome's).
    let good = Worker::start(&host, "render", "0", Some(&worker));
    let mut refused = Worker::start(&host, "render", "0", Some(&ann));
    let refused_stderr = refused.stderr.clone();
    wait_until(
        Duration::from_secs(15),
        || format!("the keyed worker completes the render task: {:?}", good.printed()),
        || redis.log_len() >= 2,
    );
    assert_eq!(good.printed().len(), 1, "{:?}", good.printed());
    assert_eq!(good.printed()[0]["task_id"].as_str(), Some(render_task.as_str()));
    assert_eq!(good.stderr(), "", "the worker's outcome was refused");
    let read = request(
        &host.addr,
        "GET",
        &format!("/api/v1/task/{render_task}"),
        &[("Authorization", &format!("Bearer {ann}"))],
        b"",
    );
    assert_eq!(read.json()["status"], "completed", "{}", read.body);
    wait_until(
        Duration::from_secs(15),
        || {
            format!(
                "the worker with a user's key stops: {}",
                refused_stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
            )
        },
        || refused.child.try_wait().ok().flatten().is_some(),
    );
    let status = refused.kill().unwrap_or_else(|| panic!("the refused worker could not be reaped"));
    assert!(!status.success(), "{status:?}");
    assert!(refused.stderr().contains("403"), "not refused with 403: {}", refused.stderr());
    assert!(refused.printed().is_empty(), "{:?}", refused.printed());

    // auth = none: anyone.
    let open_redis = Redis::start();
    let open = Host::start(
        &open_redis,
        &HostOptions { variables: vec![("policies".into(), policies.into())], ..HostOptions::default() },
    );
    let (first, _) = submit(&open, "bob", "render", None);
    let (second, _) = submit(&open, "bob", "ocr", None);
    let got = claim(&open, r#"{"kind":"render"}"#);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["task_id"].as_str(), Some(first.as_str()));
    let done = report(&open, &got[0], r#""result":"completed""#);
    assert_eq!(done.status, 200, "{}", done.body);
    let keyless = Worker::start(&open, "ocr", "0", None);
    wait_until(
        Duration::from_secs(15),
        || format!("a worker without a key completes the ocr task: {}", task(&open, &second)),
        || task(&open, &second)["status"] == "completed",
    );
    assert_eq!(keyless.printed().len(), 1, "{:?}", keyless.printed());
    assert_eq!(keyless.stderr(), "");
}

/// `/metrics` counts per kind what the test did, the same on every replica (the counts live
/// in Redis): each claim (an attempt start), each outcome as delivered, retried or failed,
/// and each refused outcome as stale; nothing lapsed.
#[test]
fn metrics_count_claims_and_outcomes_per_kind() {
    let redis = Redis::start();
    let policies = r#"{"kinds": {
        "render": {"windows": [], "pull": true, "attempts": 2},
        "ocr": {"windows": [], "pull": true}}}"#;
    let hosts = replicas(&redis, policies, 2);
    let render: Vec<String> = (0..3).map(|i| submit(&hosts[i % 2], &format!("u{i}"), "render", None).0).collect();
    let ocr: Vec<String> = (0..2).map(|i| submit(&hosts[(i + 1) % 2], &format!("u{i}"), "ocr", None).0).collect();

    let by_id = |claims: Vec<Value>| -> HashMap<String, Value> {
        claims.into_iter().map(|c| (text(&c["task_id"]), c)).collect()
    };
    let r = by_id(claim(&hosts[0], r#"{"kind":"render","max":10}"#));
    assert_eq!(r.len(), 3, "{r:?}");
    let expect = |reply: Reply, status: &str| {
        assert_eq!((reply.status, reply.json()["status"].as_str()), (200, Some(status)), "{}", reply.body);
    };
    expect(report(&hosts[1], &r[&render[0]], r#""result":"completed""#), "completed");
    expect(report(&hosts[0], &r[&render[1]], r#""result":"retry""#), "queued");
    expect(report(&hosts[1], &r[&render[2]], r#""result":"failed""#), "failed");
    let stale = report(&hosts[0], &r[&render[0]], r#""result":"completed""#);
    assert_eq!(stale.status, 409, "{}", stale.body);

    let o = by_id(claim(&hosts[1], r#"{"kind":"ocr","max":10}"#));
    assert_eq!(o.len(), 2, "{o:?}");
    expect(report(&hosts[0], &o[&ocr[0]], r#""result":"completed""#), "completed");
    expect(report(&hosts[1], &o[&ocr[1]], r#""result":"retry""#), "queued");
    // The retried one falls due after the 1 s backoff.
    let again = claim(&hosts[0], r#"{"kind":"ocr","wait":"5s"}"#);
    assert_eq!((again.len(), whole(&again[0]["attempt"])), (1, 2), "{again:?}");
    expect(report(&hosts[1], &again[0], r#""result":"completed""#), "completed");

    for host in &hosts {
        let metrics = host.get("/metrics").body;
        for (series, value) in [
            (r#"task_api_kind_claims_total{kind="render"}"#, 3.0),
            (r#"task_api_kind_claims_total{kind="ocr"}"#, 3.0),
            (r#"task_api_kind_deliveries_total{kind="render",outcome="delivered"}"#, 1.0),
            (r#"task_api_kind_deliveries_total{kind="render",outcome="retried"}"#, 1.0),
            (r#"task_api_kind_deliveries_total{kind="render",outcome="failed"}"#, 1.0),
            (r#"task_api_kind_deliveries_total{kind="ocr",outcome="delivered"}"#, 2.0),
            (r#"task_api_kind_deliveries_total{kind="ocr",outcome="retried"}"#, 1.0),
            ("task_api_stale_outcomes_total", 1.0),
        ] {
            assert_eq!(metric(&metrics, series), Some(value), "{series} on {}:\n{metrics}", host.addr);
        }
        // Absent or 0: nothing of these happened.
        for series in [r#"task_api_kind_deliveries_total{kind="ocr",outcome="failed"}"#, "task_api_lapsed_claims_total"]
        {
            assert_eq!(metric(&metrics, series).unwrap_or(0.0), 0.0, "{series} on {}:\n{metrics}", host.addr);
        }
    }
}

/// A pulled kind's configuration that cannot work is refused at load, every request (a task,
/// a claim) answered with a problem that names the cause: a target beside `"pull": true`, a
/// timeout, attempts or concurrency out of range, and the `kv` ledger, which has no claims.
#[test]
fn bad_pull_configurations_are_refused_with_the_cause_named() {
    let redis = Redis::start();
    let pulled = r#"{"kinds": {"render": {"windows": [], "pull": true}}}"#;
    // (policies, another variable, what the problem names)
    let cases = [
        (
            r#"{"kinds": {"render": {"windows": [], "pull": true, "target": "http://127.0.0.1:9/x"}}}"#,
            Some(("delivery_hosts", "http://127.0.0.1:9")),
            "a target or \"pull\": true, not both",
        ),
        (r#"{"kinds": {"render": {"windows": [], "pull": true, "timeout": "61s"}}}"#, None, "kinds.render.timeout"),
        (r#"{"kinds": {"render": {"windows": [], "pull": true, "attempts": 21}}}"#, None, "kinds.render.attempts"),
        (
            r#"{"kinds": {"render": {"windows": [], "pull": true, "concurrency": 1001}}}"#,
            None,
            "kinds.render.concurrency",
        ),
        (pulled, Some(("ledger", "kv")), "ledger"),
    ];
    for (policies, more, says) in cases {
        let mut variables = vec![("policies".to_string(), policies.to_string())];
        variables.extend(more.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        let host = Host::start(&redis, &HostOptions { variables, ..HostOptions::default() });
        for (path, body) in
            [("/api/v1/task", r#"{"user_id":"a","kind":"render"}"#), ("/api/v1/claims", r#"{"kind":"render"}"#)]
        {
            let reply = post(&host, path, body);
            assert_eq!(reply.status, 500, "{policies} {more:?}, {path}: {}", reply.body);
            let detail = text(&reply.json()["detail"]);
            assert!(detail.contains(says), "{policies} {more:?}, {path}: {detail}");
        }
    }
}
