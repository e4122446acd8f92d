//! The `check_log` command users run on their own log (`task_log.txt` lines or the NDJSON
//! export), run as a real process on files written here.

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
    let line = |id: &str, slot: i64, at: i64| format!(r#"{{"task_id":"{id}","user_id":"u","slot":{slot},"completed_at":{at}}}"#);
    let log = [line("a", 0, 3), line("b", 500, 510)].join("\n");
    // Two within a second break the default rule but not a 2-per-second one.
    assert_eq!(run_on("default", &log, &[]).0, 1);
    let (code, out) = run_on("two", &log, &["--per-second", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("lateness_ms p50=3 p99=10 max=10"), "{out}");
}
