//! What an admission costs Redis, counted with `MONITOR` on a real redis-server: the
//! commands the admission script runs for a fresh user's task (run inline) and for a task
//! queued behind others, the two common cases. A change that adds commands to either fails
//! here, not only in a benchmark.

use crate::support;

use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};
use support::{Host, HostOptions, Redis};

/// Most commands a fresh user's inline admission may run: the clock, the ledger (read and
/// written), the backlog, the lane's tail and completions, the completion record and its
/// history, the log entry, and three counters.
const FRESH_INLINE_BUDGET: usize = 15;
/// Most commands for a task queued behind the lane's others: the clock, the ledger, the
/// backlog, the record, the tail and the push, the drainer's lease (and, when no drainer
/// leads yet, the 200 ms wake-up's key), and two counters.
const QUEUED_BEHIND_BUDGET: usize = 11;

#[test]
fn admissions_stay_within_their_command_budget() {
    let redis = Redis::start();
    let (fresh, behind) = count_admission_commands(&redis, "FCALL");
    eprintln!(
        "commands per admission: fresh inline {} {fresh:?}; queued behind others {} {behind:?}",
        fresh.len(),
        behind.len()
    );
    // The scripts are one library in Redis, loaded once (scripts.rs).
    let libraries: Vec<redis::Value> = redis.query(&["FUNCTION", "LIST", "LIBRARYNAME", "task_api_*"]);
    assert_eq!(libraries.len(), 1, "the library is loaded once: {libraries:?}");
}

/// Where Redis refuses functions (here: `FCALL` and `FUNCTION` renamed, as a Redis before 7.0
/// or an ACL would refuse them), the same scripts run with `EVALSHA`, in the same budgets,
/// and queued tasks still run.
#[test]
fn admissions_fall_back_to_scripts_where_redis_refuses_functions() {
    let redis = Redis::start_with(&[
        "--rename-command",
        "FCALL",
        "fcall-renamed-by-test",
        "--rename-command",
        "FUNCTION",
        "function-renamed-by-test",
    ]);
    let (fresh, behind) = count_admission_commands(&redis, "EVALSHA");
    eprintln!("with EVALSHA: fresh inline {}; queued behind others {}", fresh.len(), behind.len());
}

/// Three admissions of one user (inline, then two queued) on a fresh host, watched with
/// `MONITOR`: the commands the script ran for the first and the third, which the client's
/// `caller` command (`FCALL` or `EVALSHA`) started. Asserts both budgets and that the two
/// queued tasks then ran.
fn count_admission_commands(redis: &Redis, caller: &str) -> (Vec<String>, Vec<String>) {
    let host = Host::start(redis, &HostOptions::default());
    // A wake-up nobody heard yet costs more (lib.lua `wake_drainer`): counted elsewhere.
    redis.wait_for_drainers(1);
    // Loads the scripts (the first call of each finds no library or answers NOSCRIPT, and
    // sends the text).
    assert_eq!(host.post_task(r#"{"user_id":"warm-up"}"#).status, 200);

    let mut monitor = redis.connection().unwrap_or_else(|e| panic!("connecting for MONITOR: {e}"));
    // MONITOR answers OK once it is listening; then each command is one status line.
    let listening: String = redis::cmd("MONITOR").query(&mut monitor).unwrap_or_else(|e| panic!("MONITOR: {e}"));
    assert_eq!(listening, "OK");
    let (sender, lines) = channel();
    std::thread::spawn(move || {
        while let Ok(redis::Value::SimpleString(line)) = monitor.recv_response() {
            if sender.send(line).is_err() {
                break;
            }
        }
    });

    let statuses: Vec<u16> = (0..3).map(|_| host.post_task(r#"{"user_id":"counted"}"#).status).collect();
    assert_eq!(statuses, [200, 202, 202]);
    // A marker after the admissions: every line before it belongs to them or the drainer.
    let _: String = redis.query(&["ECHO", "end-of-admissions"]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("end-of-admissions") => break,
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!("no end marker in MONITOR"),
        }
    }
    drop(lines);

    // Each script's own commands follow the client's call line, marked `[0 lua]`; scripts
    // and functions are atomic, so no other client's lines come between them.
    let call = format!("\"{caller}\"");
    let mut admissions: Vec<Vec<String>> = Vec::new();
    let mut current: Option<usize> = None;
    for line in &seen {
        if line.contains(" lua] ") {
            if let Some(i) = current {
                admissions[i]
                    .push(line.split(" lua] ").nth(1).unwrap_or("").split(' ').next().unwrap_or("").to_string());
            }
        } else if line.contains(&call) && line.contains("\"counted\"") {
            admissions.push(Vec::new());
            current = Some(admissions.len() - 1);
        } else {
            current = None;
        }
    }
    assert_eq!(admissions.len(), 3, "three admissions by {caller} in:\n{}", seen.join("\n"));
    let (fresh, behind) = (admissions[0].clone(), admissions[2].clone());
    assert!(fresh.iter().any(|c| c == "\"XADD\""), "the fresh task ran inline: {fresh:?}");
    assert!(fresh.len() <= FRESH_INLINE_BUDGET, "{} commands for a fresh inline admission: {fresh:?}", fresh.len());
    assert!(behind.iter().any(|c| c == "\"RPUSH\""), "the third task was queued: {behind:?}");
    assert!(behind.len() <= QUEUED_BEHIND_BUDGET, "{} commands for a queued admission: {behind:?}", behind.len());
    // The drainer runs the queued two (a log line per task).
    let ran = host.wait_for_lines(3, Duration::from_secs(20), |line| line.starts_with("counted-task completed at-"));
    assert_eq!(ran, 3, "the queued tasks ran; host stderr:\n{}", host.stderr_text());
    (fresh, behind)
}
