//! The `check_log` command users run on their own log (`task_log.txt` lines or the NDJSON
//! export), run as a real process on files written here, and the checker behind it
//! (`runtime_tests::check`) on lanes, costs and per-task policies. No servers.

use std::process::Command;

fn run_on(name: &str, log: &str, extra: &[&str]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("check-log-test-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("task_log.txt");
    assert!(std::fs::write(&file, log).is_ok(), "cannot write {}", file.display());
    let output = Command::new(env!("CARGO_BIN_EXE_check_log")).args(extra).arg(&file).output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.unwrap_or_else(|e| panic!("cannot run check_log: {e}"));
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn a_clean_seed_format_log_passes_with_per_user_counts() {
    let log = "123-task completed at-1000\n123-task completed at-2000\nbob-task completed at-1500\n";
    let (code, out) = run_on("clean", log, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("user \"123\": 2 tasks"), "{out}");
    assert!(out.contains("user \"bob\": 1 tasks"), "{out}");
    assert!(out.contains("entries=3 users=2 violations=0"), "{out}");
}

#[test]
fn a_broken_log_fails_and_names_the_violation() {
    let log = "123-task completed at-1000\n123-task completed at-1999\n";
    let (code, out) = run_on("broken", log, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("violation: user \"123\""), "{out}");
}

#[test]
fn ndjson_reports_lateness_and_respects_configured_limits() {
    let line = |id: &str, slot: i64, at: i64| {
        format!(r#"{{"task_id":"{id}","user_id":"u","slot":{slot},"completed_at":{at}}}"#)
    };
    let log = [line("a", 0, 3), line("b", 500, 510)].join("\n");
    // Two within a second break the default rule but not a 2-per-second one.
    assert_eq!(run_on("default", &log, &[]).0, 1);
    let (code, out) = run_on("two", &log, &["--per-second", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("lateness_ms p50=3 p99=10 max=10"), "{out}");
}

// Lanes, costs and per-task policies (docs/policies.md). Every expectation below is worked out by
// hand from the windows: an entry at t under `q/w` may see at most q units of its lane's
// entries (itself included) completed in (t - w, t].

use runtime_tests::check::{self, Entry, Rule, Window};

/// An NDJSON log line as `GET /api/v1/log` writes it since kinds existed.
fn ndjson(id: &str, user: &str, kind: &str, cost: u64, policy: &str, slot: i64, at: i64) -> String {
    format!(
        r#"{{"task_id":"{id}","user_id":"{user}","slot":{slot},"completed_at":{at},"kind":"{kind}","cost":{cost},"policy":"{policy}"}}"#
    )
}

/// A line from before kinds: no kind, cost or policy.
fn legacy(id: &str, user: &str, slot: i64, at: i64) -> String {
    format!(r#"{{"task_id":"{id}","user_id":"{user}","slot":{slot},"completed_at":{at}}}"#)
}

fn parse(lines: &[String]) -> Vec<Entry> {
    lines.iter().map(|l| check::parse_line(l).unwrap_or_else(|| panic!("not a log entry: {l}"))).collect()
}

fn checked(lines: &[String]) -> check::Report {
    check::check(&parse(lines), Rule::default(), None)
}

const FREE: &str = "1/1000,20/60000";
const PRO: &str = "5/1000,100/60000";
const EMAIL: &str = "5/60000";

/// User u's default lane moves from the built-in tier to pro after three tasks; u also has an
/// email lane of weighted tasks; v's entries predate policies (held to the default rule).
fn mixed_log() -> Vec<String> {
    vec![
        ndjson("a1", "u", "default", 1, FREE, 0, 0),
        ndjson("e1", "u", "email", 5, EMAIL, 0, 0),
        legacy("v1", "v", 500, 510),
        ndjson("a2", "u", "default", 1, FREE, 1_000, 1_000),
        legacy("v2", "v", 1_510, 1_520),
        ndjson("a3", "u", "default", 1, FREE, 2_000, 2_000),
        // pro from here: (1500, 2500] holds a3 + a4 = 3 units, (1700, 2700] a3 + a4 + a5 = 5.
        ndjson("a4", "u", "default", 2, PRO, 2_500, 2_500),
        ndjson("a5", "u", "default", 2, PRO, 2_700, 2_700),
        // (0, 60000] leaves e1 (at 0) out: 3 units; (500, 60500]: e2 + e3 = 5.
        ndjson("e2", "u", "email", 3, EMAIL, 60_000, 60_000),
        ndjson("e3", "u", "email", 2, EMAIL, 60_000, 60_500),
    ]
}

#[test]
fn a_clean_log_of_lanes_weights_and_a_tier_change_passes() {
    let report = checked(&mixed_log());
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!((report.entries, report.users, report.lanes), (10, 2, 3));
    let lane = |u: &str, k: &str| report.per_lane.get(&(u.to_string(), k.to_string())).copied();
    assert_eq!((lane("u", "default"), lane("u", "email"), lane("v", "default")), (Some(5), Some(3), Some(2)));
    assert_eq!(report.per_user.get("u"), Some(&8));
    assert_eq!(report.lateness_ms, vec![0, 0, 0, 0, 0, 0, 0, 10, 10, 500]);
    // e3 could run at 60000 (e1's units leave its window then; e2 ran at 60000): its 500 ms
    // are its own. v1 and v2 are 10 ms late each, v2 not pushed by v1 (510 + 1000 = 1510).
    assert_eq!(report.own_delay_ms, vec![0, 0, 0, 0, 0, 0, 0, 10, 10, 500]);
}

#[test]
fn entries_are_held_to_their_own_policy_not_the_default_rule() {
    // Control: the pro tasks a4 and a5 break the built-in 1/s when they carry no policy:
    // (1500, 2500] holds 1 + 2 = 3 units, (1700, 2700] 1 + 2 + 2 = 5. The 20/60s window is
    // not broken (7 units in all).
    let mut entries = parse(&mixed_log());
    for e in entries.iter_mut().filter(|e| e.task_id.as_deref() == Some("a4") || e.task_id.as_deref() == Some("a5")) {
        e.policy = None;
    }
    let report = check::check(&entries, Rule::default(), None);
    assert_eq!(report.violations.len(), 2, "{:?}", report.violations);
    assert!(
        report.violations.iter().all(|v| v.contains("over 1 per 1000 ms of the default rule")),
        "{:?}",
        report.violations
    );
}

#[test]
fn lanes_of_one_user_are_independent() {
    // One second apart would be needed only if the two were one lane.
    let lines = [ndjson("d1", "u", "default", 1, "1/1000", 0, 0), ndjson("m1", "u", "email", 1, "1/1000", 10, 10)];
    let report = checked(&lines);
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!((report.users, report.lanes), (1, 2));
    // Control: the same two in one lane, (-990, 10] holds 2 units.
    let lines = [ndjson("d1", "u", "default", 1, "1/1000", 0, 0), ndjson("m1", "u", "default", 1, "1/1000", 10, 10)];
    let report = checked(&lines);
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    assert!(report.violations[0].contains(r#"user "u" kind "default": 2 units"#), "{:?}", report.violations);
}

#[test]
fn a_weighted_entry_that_overfills_a_window_is_flagged() {
    let two = |cost: u64, at: i64| {
        [ndjson("w1", "u", "email", 3, EMAIL, 0, 0), ndjson("w2", "u", "email", cost, EMAIL, at, at)]
    };
    // (-30000, 30000] holds 3 + 3 = 6 units of 5: w2 is flagged, w1 (3 units alone) is not.
    let report = checked(&two(3, 30_000));
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    let v = &report.violations[0];
    for part in [
        r#"user "u" kind "email": 6 units"#,
        "within (-30000, 30000]",
        "over 5 per 60000 ms of its policy",
        r#"task "w2""#,
    ] {
        assert!(v.contains(part), "{part:?} not in {v}");
    }
    // 3 + 2 = 5 fits; at 60000, w1 (at 0) has left the window; at 59999 it has not.
    assert!(checked(&two(2, 30_000)).is_clean());
    assert!(checked(&two(3, 60_000)).is_clean());
    assert_eq!(checked(&two(3, 59_999)).violations.len(), 1);
    // A cost over the quota breaks the window on its own.
    assert_eq!(checked(&[ndjson("big", "u", "email", 6, EMAIL, 0, 0)]).violations.len(), 1);
}

#[test]
fn an_entry_that_breaks_its_policy_but_not_the_default_rule_is_flagged() {
    // 1 per 5 s: (-3000, 2000] holds both. The default rule (1/s, 20/min) would allow them.
    let lines =
        [ndjson("r1", "u", "report", 1, "1/5000", 0, 0), ndjson("r2", "u", "report", 1, "1/5000", 2_000, 2_000)];
    let report = checked(&lines);
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    assert!(report.violations[0].contains("over 1 per 5000 ms of its policy"), "{:?}", report.violations);
    let mut entries = parse(&lines);
    entries.iter_mut().for_each(|e| e.policy = None);
    assert!(check::check(&entries, Rule::default(), None).is_clean());
    // A tier change: the second task's own policy is what counts, not the first's.
    let pro_then_free =
        [ndjson("t1", "u", "default", 1, "5/1000", 0, 0), ndjson("t2", "u", "default", 1, "1/1000", 500, 500)];
    assert_eq!(checked(&pro_then_free).violations.len(), 1);
    let free_then_pro =
        [ndjson("t1", "u", "default", 1, "1/1000", 0, 0), ndjson("t2", "u", "default", 1, "5/1000", 500, 500)];
    assert!(checked(&free_then_pro).is_clean());
    // No windows: no limit.
    let unlimited = [ndjson("n1", "u", "bulk", 1, "", 0, 0), ndjson("n2", "u", "bulk", 1, "", 0, 0)];
    assert!(checked(&unlimited).is_clean());
}

#[test]
fn own_delay_follows_the_entrys_policy_and_costs() {
    // 3 units per 10 s. o1 (2 units) ran 100 ms late; o2 (2 units) could not run before
    // o1's completion + 10000 = 10100, as 2 + 2 > 3: of its 130 ms lateness 100 are
    // inherited and 30 its own.
    let run = |first_cost: u64| {
        checked(&[
            ndjson("o1", "u", "default", first_cost, "3/10000", 0, 100),
            ndjson("o2", "u", "default", 2, "3/10000", 10_000, 10_130),
        ])
    };
    let report = run(2);
    assert!(report.is_clean(), "{}", report.problems());
    assert_eq!(report.lateness_ms, vec![100, 130]);
    assert_eq!(report.own_delay_ms, vec![30, 100]);
    // With a 1-unit o1 the two fit one window (1 + 2 = 3): o2 was allowed at its slot.
    assert_eq!(run(1).own_delay_ms, vec![100, 130]);
}

#[test]
fn a_long_lane_is_checked_and_one_planted_violation_found() {
    // 250,000 entries 60 ms apart under 1000 per 60 s: every window (60(i-1000), 60i] holds
    // exactly 1000. Moving entry 200000 one ms earlier lets its window reach back to entry
    // 199000: 1001 units. The windows of entries 200001..=200999 still hold 1000 (the moved
    // entry was in them before and is now), that of 201000 still leaves it out, and earlier
    // entries never saw it.
    let policy = Some(vec![Window { quota: 1_000, window_ms: 60_000 }]);
    let mut entries: Vec<Entry> =
        (0..250_000).map(|i| Entry { policy: policy.clone(), ..Entry::new("u", 60 * i) }).collect();
    assert!(check::check(&entries, Rule::default(), None).is_clean());
    entries[200_000].completed_at -= 1;
    let report = check::check(&entries, Rule::default(), None);
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations.iter().take(3).collect::<Vec<_>>());
    assert!(report.violations[0].contains("1001 units"), "{}", report.violations[0]);
    assert!(
        report.violations[0].contains(&format!("({}, {}]", 60 * 200_000 - 1 - 60_000, 60 * 200_000 - 1)),
        "{}",
        report.violations[0]
    );
}

#[test]
fn the_command_reads_kinds_costs_and_policies() {
    let (code, out) = run_on("lanes", &mixed_log().join("\n"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#"lane "u" "email": 3 tasks"#), "{out}");
    assert!(out.contains("entries=10 users=2 violations=0"), "{out}");
    assert!(out.contains("lanes=3"), "{out}");
    let mut log = mixed_log();
    log.push(ndjson("e4", "u", "email", 1, EMAIL, 60_500, 60_600));
    let (code, out) = run_on("overfull", &log.join("\n"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(r#"violation: user "u" kind "email": 6 units"#), "{out}");
}

#[test]
fn the_command_fails_on_an_unreadable_entry_and_still_answers_help() {
    let log = [ndjson("a1", "u", "default", 1, FREE, 0, 0), ndjson("a2", "u", "default", 1, "1/soon", 1_000, 1_000)]
        .join("\n");
    let (code, out) = run_on("unreadable", &log, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unreadable: line 2: policy \"1/soon\""), "{out}");
    assert!(out.contains("entries=1 "), "{out}");
    let output = Command::new(env!("CARGO_BIN_EXE_check_log"))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("cannot run check_log: {e}"));
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("usage: check_log [--per-second N]"));
}

#[test]
fn the_command_counts_attempt_starts_and_holds_the_concurrency_flag() {
    // Two attempts of lane ("u", "hook") under 1 per 1 s, started a second apart and in flight
    // together over [1000, 1500]; a's first attempt was retried.
    let attempt = |id: &str, n: u32, started: i64, ended: i64, outcome: &str| {
        format!(
            r#"{{"task_id":"{id}","user_id":"u","slot":{started},"completed_at":{ended},"kind":"hook","cost":1,"policy":"1/1000","started_at":{started},"attempt":{n},"status":200,"duration_ms":{}{outcome}}}"#,
            ended - started
        )
    };
    let log = [attempt("a", 1, 0, 1_500, r#","outcome":"retry""#), attempt("b", 1, 1_000, 1_600, "")].join("\n");
    let (code, out) = run_on("attempts", &log, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("attempts=2 retries=1 failed=0 in_flight=0"), "{out}");
    let (code, out) = run_on("in-flight", &log, &["--concurrency", "hook=1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(r#"in flight: user "u" kind "hook": 2 attempts in flight at 1000"#), "{out}");
    assert_eq!(run_on("bad-flag", &log, &["--concurrency", "hook=0"]).0, 2);
}
