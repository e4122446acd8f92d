//! Checks a task log against SPEC §1, written without reusing the app's `slot.rs`, so that a
//! mistake there cannot hide here. Used by the `check_log` binary and by the tests.
//!
//! The rule on completions: for every user, any `per_second + 1` consecutive completions
//! span at least 1 s, and any `per_minute + 1` consecutive ones at least 60 s (with the
//! defaults: two completions are ≥ 1000 ms apart, and 21 consecutive ones span ≥ 60000 ms).

use std::collections::{BTreeMap, HashMap};

/// One completed task as the log shows it. `task_id` and `slot` exist only in the NDJSON
/// form of the log; the seed-format text lines carry just the user and the time.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub task_id: Option<String>,
    pub user_id: String,
    pub slot: Option<i64>,
    pub completed_at: i64,
}

/// Parses one log line: NDJSON (`{"task_id":…,"user_id":…,"slot":…,"completed_at":…}`) or the
/// seed format `<user_id>-task completed at-<epoch ms>`. `None` for lines that are neither
/// (a host's own output mixed into stdout, say).
pub fn parse_line(line: &str) -> Option<Entry> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let user_id = match value.get("user_id")? {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Some(Entry {
            task_id: value.get("task_id").and_then(|v| v.as_str()).map(str::to_string),
            user_id,
            slot: value.get("slot").and_then(|v| v.as_i64()),
            completed_at: value.get("completed_at")?.as_i64()?,
        });
    }
    let (user_id, at) = line.rsplit_once("-task completed at-")?;
    Some(Entry { task_id: None, user_id: user_id.to_string(), slot: None, completed_at: at.parse().ok()? })
}

#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub per_second: usize,
    pub per_minute: usize,
}

impl Default for Rule {
    fn default() -> Self {
        Rule { per_second: 1, per_minute: 20 }
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub entries: usize,
    pub users: usize,
    /// Human-readable descriptions of every broken window.
    pub violations: Vec<String>,
    /// Task ids seen more than once.
    pub duplicated: Vec<String>,
    /// Expected task ids never seen (only when expectations were given).
    pub missing: Vec<String>,
    /// Tasks that completed before their slot.
    pub early: Vec<String>,
    /// `completed_at - slot` of every entry that has a slot, sorted.
    pub lateness_ms: Vec<i64>,
    /// Completions per user, by user id.
    pub per_user: BTreeMap<String, usize>,
    /// For entries with a slot, sorted: how long after the earliest instant the rule allowed
    /// *given the user's actual earlier completions* each task ran. Lateness minus this is
    /// what a task inherited from a late predecessor (SPEC §1: a late task pushes the next
    /// one back); this part is the executor's own delay.
    pub own_delay_ms: Vec<i64>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.duplicated.is_empty() && self.missing.is_empty() && self.early.is_empty()
    }

    /// The p-th percentile (0..=100) of lateness, nearest-rank.
    pub fn lateness_percentile(&self, p: f64) -> Option<i64> {
        percentile(&self.lateness_ms, p)
    }

    /// The p-th percentile (0..=100) of the executor's own delay, nearest-rank.
    pub fn own_delay_percentile(&self, p: f64) -> Option<i64> {
        percentile(&self.own_delay_ms, p)
    }

    pub fn summary(&self) -> String {
        let pct = |p| self.lateness_percentile(p).map_or("-".to_string(), |v| v.to_string());
        let own = |p| self.own_delay_percentile(p).map_or("-".to_string(), |v| v.to_string());
        format!(
            "entries={} users={} violations={} duplicated={} missing={} early={} lateness_ms p50={} p99={} max={} own_delay_ms p50={} p99={} max={}",
            self.entries,
            self.users,
            self.violations.len(),
            self.duplicated.len(),
            self.missing.len(),
            self.early.len(),
            pct(50.0),
            pct(99.0),
            pct(100.0),
            own(50.0),
            own(99.0),
            own(100.0),
        )
    }
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(values: &[i64], p: f64) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
    values.get(rank.min(values.len()) - 1).copied()
}

/// Checks `entries` against the rule; `expected` (task ids that were acknowledged), when
/// given, must each appear exactly once.
pub fn check(entries: &[Entry], rule: Rule, expected: Option<&[String]>) -> Report {
    let mut report = Report { entries: entries.len(), ..Report::default() };
    let mut by_user: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut slotted_by_user: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for entry in entries {
        by_user.entry(&entry.user_id).or_default().push(entry.completed_at);
        if let Some(id) = &entry.task_id {
            *seen.entry(id).or_default() += 1;
        }
        if let Some(slot) = entry.slot {
            slotted_by_user.entry(&entry.user_id).or_default().push((entry.completed_at, slot));
            report.lateness_ms.push(entry.completed_at - slot);
            if entry.completed_at < slot {
                report.early.push(format!("{:?} ran at {} before its slot {}", entry.task_id, entry.completed_at, slot));
            }
        }
    }
    report.users = by_user.len();
    report.per_user = by_user.iter().map(|(user, times)| (user.to_string(), times.len())).collect();
    for tasks in slotted_by_user.values_mut() {
        tasks.sort_unstable();
        for i in 0..tasks.len() {
            let (completed_at, slot) = tasks[i];
            let mut allowed = slot;
            for (limit, window_ms) in [(rule.per_second, 1_000), (rule.per_minute, 60_000)] {
                if limit > 0 && i >= limit {
                    allowed = allowed.max(tasks[i - limit].0 + window_ms);
                }
            }
            report.own_delay_ms.push(completed_at - allowed);
        }
    }
    report.own_delay_ms.sort_unstable();
    report.lateness_ms.sort_unstable();
    for (user, times) in &mut by_user {
        times.sort_unstable();
        for (limit, window_ms) in [(rule.per_second, 1_000), (rule.per_minute, 60_000)] {
            if limit == 0 {
                continue;
            }
            // Any limit+1 consecutive completions must span at least the window.
            for i in limit..times.len() {
                let span = times[i] - times[i - limit];
                if span < window_ms {
                    report.violations.push(format!(
                        "user {user:?}: {} completions within {span} ms (at {}..{}), limit {limit} per {window_ms} ms",
                        limit + 1,
                        times[i - limit],
                        times[i]
                    ));
                }
            }
        }
    }
    report.duplicated = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.to_string()).collect();
    if let Some(expected) = expected {
        report.missing = expected.iter().filter(|id| !seen.contains_key(id.as_str())).cloned().collect();
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(user: &str, t: i64) -> Entry {
        Entry { task_id: None, user_id: user.to_string(), slot: None, completed_at: t }
    }

    #[test]
    fn parses_both_log_forms() {
        assert_eq!(parse_line("123-task completed at-1700000000000"), Some(at("123", 1_700_000_000_000)));
        assert_eq!(parse_line("a-task-b-task completed at-5"), Some(at("a-task-b", 5)));
        let json = r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":12}"#;
        let entry = parse_line(json);
        assert_eq!(entry.as_ref().and_then(|e| e.slot), Some(10));
        assert_eq!(parse_line("Serving http://127.0.0.1:3000"), None);
    }

    #[test]
    fn two_completions_closer_than_a_second_are_a_violation() {
        let report = check(&[at("u", 0), at("u", 999)], Rule::default(), None);
        assert_eq!(report.violations.len(), 1);
        let report = check(&[at("u", 0), at("u", 1_000), at("v", 1_001)], Rule::default(), None);
        assert!(report.is_clean(), "{:?}", report.violations);
        assert_eq!(report.per_user.get("u"), Some(&2));
        assert_eq!(report.per_user.get("v"), Some(&1));
    }

    #[test]
    fn twenty_one_within_a_minute_is_a_violation() {
        let mut entries: Vec<Entry> = (0..20).map(|i| at("u", i * 1_000)).collect();
        entries.push(at("u", 59_999));
        assert_eq!(check(&entries, Rule::default(), None).violations.len(), 1);
        entries.pop();
        entries.push(at("u", 60_000));
        assert!(check(&entries, Rule::default(), None).is_clean());
    }

    #[test]
    fn duplicates_missing_and_early_tasks_are_reported() {
        let entry = |id: &str, slot, t| Entry { task_id: Some(id.into()), user_id: "u".into(), slot: Some(slot), completed_at: t };
        let entries = [entry("a", 0, 5), entry("a", 0, 2_000), entry("b", 10_000, 9_000)];
        let expected = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let report = check(&entries, Rule::default(), Some(&expected));
        assert_eq!(report.duplicated, vec!["a".to_string()]);
        assert_eq!(report.missing, vec!["c".to_string()]);
        assert_eq!(report.early.len(), 1);
        assert_eq!(report.lateness_percentile(100.0), Some(2_000));
    }

    #[test]
    fn own_delay_excludes_what_a_late_predecessor_pushed_back() {
        let entry = |slot, t| Entry { task_id: None, user_id: "u".into(), slot: Some(slot), completed_at: t };
        // The first task ran 50 ms late, so the second could not start before 1_050: its
        // 60 ms lateness is 50 inherited plus 10 of its own.
        let report = check(&[entry(0, 50), entry(1_000, 1_060)], Rule::default(), None);
        assert_eq!(report.lateness_ms, vec![50, 60]);
        assert_eq!(report.own_delay_ms, vec![10, 50]);
    }
}
