//! Checks a task log against the schedule rule (every window of each task's policy) and reports lateness.
//!
//! Usage: `check_log [--per-second N] [--per-minute N] [--concurrency KIND=N]... [--expect IDS_FILE] [--per-user] [LOG_FILE]`
//! LOG_FILE (default: standard input) holds seed-format lines
//! (`<user_id>-task completed at-<epoch ms>`, as in task_log.txt or `GET /api/v1/log`) or
//! NDJSON lines (`GET /api/v1/log` with `Accept: application/x-ndjson`); other lines are
//! skipped. An NDJSON line carries `task_id`, `user_id`, `slot`, `completed_at` and, since
//! kinds and tiers, `kind` (absent: `default`), `cost` (units, absent: 1) and `policy` (the
//! windows the task was admitted under, `<q>/<window ms>` joined by `,`, e.g.
//! `"1/1000,20/60000"`; `""` for none). Each lane (user, kind) is checked on its own, every
//! entry against the windows of its own policy, counting the costs of the lane's entries
//! completed in each window; entries without a policy (all seed-format lines) are held to
//! `--per-second` per 1 s and `--per-minute` per 60 s (defaults 1 and 20; 0 switches a
//! window off), 1 unit each. A delivery attempt (an entry with `started_at`: every attempt
//! that ended, retried and failed ones too) counts at its start; a task ends with the entry
//! that completed it or with its `"failed"` one. `--concurrency KIND=N` (repeatable) holds
//! each lane of KIND to at most N attempts in flight (`[started_at, completed_at]`) at once.
//! A line that starts like an NDJSON entry but cannot be read is reported as `unreadable`
//! and makes the log fail. IDS_FILE lists acknowledged task ids, one a line: each must end
//! exactly once (NDJSON only). Prints every violation, then
//! tasks per user (each user with `--per-user` or when there are at most 50, otherwise the
//! spread; per lane too when the log has kinds other than `default`), then a summary line
//! with the lateness percentiles (NDJSON only: text lines carry no slot). Exit status:
//! 0 clean, 1 rule broken (or entries unreadable), 2 usage or I/O error.

use runtime_tests::check::{DEFAULT_KIND, Rule, check_with_concurrency, parse_entry};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

/// Above this many users the per-user lines are summarised unless `--per-user` asks.
const PER_USER_LIST_MAX: usize = 50;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("check_log: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let mut rule = Rule::default();
    let mut expect_file = None;
    let mut log_file = None;
    let mut list_users = false;
    let mut concurrency = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            args.next().and_then(|v| v.parse().ok()).ok_or(format!("{name} takes a whole number"))
        };
        match arg.as_str() {
            "--per-second" => rule.per_second = number("--per-second")?,
            "--per-minute" => rule.per_minute = number("--per-minute")?,
            "--expect" => expect_file = Some(args.next().ok_or("--expect takes a file")?),
            "--per-user" => list_users = true,
            "--concurrency" => {
                let bad = || "--concurrency takes KIND=N, N a whole number of at least 1".to_string();
                let spec = args.next().ok_or_else(bad)?;
                let (kind, n) = spec.split_once('=').ok_or_else(bad)?;
                let n = n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(bad)?;
                concurrency.insert(kind.to_string(), n);
            }
            "-h" | "--help" => {
                println!(
                    "usage: check_log [--per-second N] [--per-minute N] [--concurrency KIND=N]... [--expect IDS_FILE] [--per-user] [LOG_FILE]"
                );
                println!("NDJSON entries are checked per (user, kind) against their own `policy`; --per-second and");
                println!(
                    "--per-minute (default 1 and 20, 0 = off) limit entries without one, as seed-format lines are."
                );
                println!(
                    "Delivery attempts count at their start; --concurrency KIND=N allows N attempts of a lane in flight."
                );
                return Ok(true);
            }
            _ if log_file.is_none() && !arg.starts_with("--") => log_file = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?} (see --help)")),
        }
    }
    let mut text = String::new();
    match &log_file {
        Some(path) => text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => {
            std::io::stdin().read_to_string(&mut text).map_err(|e| format!("stdin: {e}"))?;
        }
    }
    let mut entries = Vec::new();
    let mut unreadable = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_entry(line) {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(e) => unreadable.push(format!("line {}: {e}", i + 1)),
        }
    }
    let expected: Option<Vec<String>> = match &expect_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{path}: {e}"))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        None => None,
    };
    let report = check_with_concurrency(&entries, rule, expected.as_deref(), &concurrency);
    for line in &unreadable {
        println!("unreadable: {line}");
    }
    for v in report.violations.iter().chain(&report.early) {
        println!("violation: {v}");
    }
    for v in &report.in_flight {
        println!("in flight: {v}");
    }
    for id in &report.duplicated {
        println!("duplicated: {id}");
    }
    for id in &report.missing {
        println!("missing: {id}");
    }
    if list_users || report.per_user.len() <= PER_USER_LIST_MAX {
        for (user, count) in &report.per_user {
            println!("user {user:?}: {count} tasks");
        }
    } else {
        let counts = report.per_user.values();
        let (min, max) = (counts.clone().min().unwrap_or(&0), counts.max().unwrap_or(&0));
        println!("tasks per user: {min} to {max} over {} users (--per-user lists each)", report.per_user.len());
    }
    let kinds = report.per_lane.keys().any(|(_, kind)| kind != DEFAULT_KIND);
    if kinds && (list_users || report.per_lane.len() <= PER_USER_LIST_MAX) {
        for ((user, kind), count) in &report.per_lane {
            println!("lane {user:?} {kind:?}: {count} tasks");
        }
    }
    println!("{}", report.summary());
    Ok(report.is_clean() && unreadable.is_empty())
}
