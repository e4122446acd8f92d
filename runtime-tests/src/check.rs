//! Checks a task log against the schedule rule (every window of each task's policy), written without reusing the app's `slot.rs`, so
//! that a mistake there cannot hide here. Used by the `check_log` binary and by the tests.
//!
//! The rule, per lane (user, kind), in the order of the instants the windows count: for every
//! entry *n* and every window (`q` units per `w` ms) of the policy *n* was admitted under, the
//! costs of the lane's entries counted in `(at[n] - w, at[n]]`, *n* and the entries before it
//! included, add up to at most `q`. An entry's instant is its `completed_at`, or for a
//! delivery attempt (an entry with `started_at`; a pulled task's attempts are the same, with
//! the worker's `result` in place of a `status`) its `started_at`: the windows count attempt
//! starts, every attempt's, retried, lapsed and failed ones included. The policy comes from the entry
//! itself (the NDJSON `policy` field); an entry without one (a seed-format text line, or an
//! entry written before policies existed) is held to the configured [`Rule`]: `per_second`
//! per 1 s and `per_minute` per 60 s, each of its entries costing 1 unit. With those defaults
//! this is the default rule: two completions are ≥ 1000 ms apart, and 21 consecutive ones span
//! ≥ 60000 ms.
//!
//! A task ends with one entry: a plain entry, a delivery attempt without `outcome` (it
//! completed the task) or with `outcome: "failed"`; attempts with `outcome: "retry"` are not
//! endings. A task that ends twice is duplicated. With a concurrency bound for a kind
//! ([`check_with_concurrency`]), at most that many attempts of each of its lanes may be in
//! flight (`[started_at, completed_at]`) at any instant.
//!
//! The windows are plain counts (prefix sums of the costs and a binary search per window),
//! so a log of 250,000 entries in one lane is checked in well under a second.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// The kind of an entry that names none.
pub const DEFAULT_KIND: &str = "default";

/// One window of a policy: at most `quota` units in any `window_ms` milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub quota: u64,
    pub window_ms: i64,
}

/// How a failed delivery attempt ended (the NDJSON `outcome` field; absent on the attempt
/// that completed its task).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The attempt failed and the task will be tried again: not the end of the task.
    Retry,
    /// The task's last attempt failed: the task ended, failed.
    Failed,
}

/// What a worker reported for an attempt of a pulled task (the NDJSON `result` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PulledResult {
    /// The work was done: the attempt completed its task.
    Completed,
    /// The worker asks for another attempt (the task fails instead after its last attempt).
    Retry,
    /// The worker failed the task.
    Failed,
}

/// One log entry: a completed task, or one ended delivery attempt (`started_at` is `Some`).
/// `task_id`, `slot`, `kind`, `cost`, `policy` and the delivery fields exist only in the NDJSON
/// form of the log; the seed-format text lines carry just the user and the time (and stand for
/// the `default` kind, 1 unit, no policy of their own).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub task_id: Option<String>,
    pub user_id: String,
    pub slot: Option<i64>,
    /// When the task completed, or when this attempt ended.
    pub completed_at: i64,
    /// The task's kind: with `user_id`, its lane.
    pub kind: String,
    /// The task's units (1 or more).
    pub cost: u64,
    /// The windows the task was admitted under, from the entry's `policy` field (`Some` of
    /// none for `""`: no limit). `None`: the entry names no policy and is held to the
    /// [`Rule`] given to [`check`].
    pub policy: Option<Vec<Window>>,
    /// A delivery attempt: when it was claimed (Redis's clock). The windows count this instant.
    pub started_at: Option<i64>,
    /// A delivery attempt: its number, from 1.
    pub attempt: Option<u32>,
    /// A delivery attempt: the backend's HTTP status, when it answered.
    pub status: Option<u16>,
    /// A pulled task's attempt: what its worker reported, in place of a `status`.
    pub result: Option<PulledResult>,
    /// A delivery attempt: what went wrong when there was no answer (`timeout`, `lapsed`, …).
    pub error: Option<String>,
    /// A delivery attempt: how long the backend took to answer.
    pub duration_ms: Option<i64>,
    /// A failed delivery attempt: whether its task will be retried or has failed.
    pub outcome: Option<Outcome>,
}

impl Entry {
    /// An entry as a seed-format line gives it: `user_id` completed at `completed_at`, of the
    /// default kind, 1 unit, without a task id, slot, policy or delivery fields.
    pub fn new(user_id: impl Into<String>, completed_at: i64) -> Entry {
        Entry {
            task_id: None,
            user_id: user_id.into(),
            slot: None,
            completed_at,
            kind: DEFAULT_KIND.to_string(),
            cost: 1,
            policy: None,
            started_at: None,
            attempt: None,
            status: None,
            result: None,
            error: None,
            duration_ms: None,
            outcome: None,
        }
    }

    /// The instant the lane's windows count this entry at: an attempt's start, else the
    /// completion.
    pub fn counted_at(&self) -> i64 {
        self.started_at.unwrap_or(self.completed_at)
    }

    /// Whether this entry ends its task (completed or failed), as opposed to an attempt to be
    /// retried.
    pub fn ends_task(&self) -> bool {
        self.outcome != Some(Outcome::Retry)
    }
}

/// The windows of a policy as a log entry writes them: `<q>/<window ms>` joined by `,`
/// (`"1/1000,20/60000"`); `""` is a policy without windows.
pub fn parse_policy(spec: &str) -> Result<Vec<Window>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    spec.split(',')
        .map(|part| {
            let bad = || format!("policy {spec:?}: window {part:?} is not <q>/<window ms> with both at least 1");
            let (q, w) = part.trim().split_once('/').ok_or_else(bad)?;
            let quota = q.trim().parse::<u64>().ok().filter(|q| *q > 0).ok_or_else(bad)?;
            let window_ms = w.trim().parse::<i64>().ok().filter(|w| *w > 0).ok_or_else(bad)?;
            Ok(Window { quota, window_ms })
        })
        .collect()
}

/// Parses one log line: NDJSON (`{"task_id":…,"user_id":…,"slot":…,"completed_at":…,
/// "kind":…,"cost":…,"policy":…}`, a delivery attempt adding `started_at`, `attempt`,
/// `status` or `error` (a pulled task's attempt: its worker's `result` or `error`, and
/// `detail`), `duration_ms` and `outcome`) or the seed format `<user_id>-task completed at-<epoch ms>`.
/// `None` for lines that are neither (a host's own output mixed into stdout, say) and for
/// NDJSON entries [`parse_entry`] cannot read.
pub fn parse_line(line: &str) -> Option<Entry> {
    parse_entry(line).ok().flatten()
}

/// [`parse_line`], telling apart a line that is no log entry (`Ok(None)`) from one that looks
/// like an NDJSON entry but cannot be read (`Err`, naming what is wrong): a line starting
/// with `{` that is not JSON, or a JSON object with a `task_id` or `completed_at` whose
/// `user_id`, `completed_at`, `slot`, `kind`, `cost` (a whole number ≥ 1), `policy` or a
/// delivery field (`started_at`, `attempt` ≥ 1, `status`, `error`, `duration_ms`, `outcome`
/// `"retry"` or `"failed"`, a pulled attempt's `result` `"completed"`, `"retry"` or
/// `"failed"`, agreeing with its `outcome` and without a `status`; `attempt`, `outcome` and
/// `result` only with `started_at`) is missing where required or malformed. A pulled
/// attempt's `detail` (any JSON) is not read. A JSON object with neither field is someone
/// else's output and is skipped.
pub fn parse_entry(line: &str) -> Result<Option<Entry>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let Some(object) = value.as_object() else { return Ok(None) };
        if !object.contains_key("task_id") && !object.contains_key("completed_at") {
            return Ok(None);
        }
        let user_id = match object.get("user_id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return Err("no user_id".to_string()),
        };
        let completed_at = object.get("completed_at").and_then(|v| v.as_i64()).ok_or("no whole-number completed_at")?;
        let whole = |name: &str| match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or(format!("{name} {v} is not a whole number")),
        };
        let slot = whole("slot")?;
        let kind = match object.get("kind") {
            None => DEFAULT_KIND.to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => return Err(format!("kind {v} is not a string")),
        };
        let cost = match object.get("cost") {
            None => 1,
            Some(v) => v.as_u64().filter(|c| *c > 0).ok_or(format!("cost {v} is not a whole number of at least 1"))?,
        };
        let policy = match object.get("policy") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(parse_policy(s)?),
            Some(v) => return Err(format!("policy {v} is not a string")),
        };
        let task_id = match object.get("task_id") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(format!("task_id {v} is not a string")),
        };
        let started_at = whole("started_at")?;
        let attempt = match whole("attempt")? {
            None => None,
            Some(n) => Some(u32::try_from(n).ok().filter(|n| *n > 0).ok_or(format!("attempt {n} is not 1 or more"))?),
        };
        let status = match whole("status")? {
            None => None,
            Some(n) => Some(u16::try_from(n).map_err(|_| format!("status {n} is not an HTTP status"))?),
        };
        let error = match object.get("error") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(format!("error {v} is not a string")),
        };
        let outcome = match object.get("outcome") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s == "retry" => Some(Outcome::Retry),
            Some(serde_json::Value::String(s)) if s == "failed" => Some(Outcome::Failed),
            Some(v) => return Err(format!("outcome {v} is neither \"retry\" nor \"failed\"")),
        };
        let result = match object.get("result") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s == "completed" => Some(PulledResult::Completed),
            Some(serde_json::Value::String(s)) if s == "retry" => Some(PulledResult::Retry),
            Some(serde_json::Value::String(s)) if s == "failed" => Some(PulledResult::Failed),
            Some(v) => return Err(format!("result {v} is not \"completed\", \"retry\" or \"failed\"")),
        };
        if started_at.is_none() && (attempt.is_some() || outcome.is_some() || result.is_some()) {
            return Err("an attempt, outcome or result without started_at".to_string());
        }
        if let Some(result) = result {
            // A worker's word and how the attempt ended must agree: `completed` ends the task
            // (no outcome), `failed` fails it, and `retry` retries it or, on its last attempt,
            // fails it. A pulled attempt has no HTTP status.
            let agrees = match result {
                PulledResult::Completed => outcome.is_none(),
                PulledResult::Failed => outcome == Some(Outcome::Failed),
                PulledResult::Retry => outcome.is_some(),
            };
            if !agrees {
                return Err(format!("result {result:?} with outcome {outcome:?}"));
            }
            if status.is_some() {
                return Err("both a worker's result and an HTTP status".to_string());
            }
        }
        let duration_ms = whole("duration_ms")?;
        return Ok(Some(Entry {
            task_id,
            user_id,
            slot,
            completed_at,
            kind,
            cost,
            policy,
            started_at,
            attempt,
            status,
            result,
            error,
            duration_ms,
            outcome,
        }));
    }
    let Some((user_id, at)) = line.rsplit_once("-task completed at-") else { return Ok(None) };
    Ok(at.parse().ok().map(|at| Entry::new(user_id, at)))
}

/// The limits of entries that name no policy of their own: the default policy's two windows (1 per 1 s, 20 per 60 s).
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

impl Rule {
    /// `per_second` per 1000 ms and `per_minute` per 60000 ms; a limit of 0 switches its
    /// window off.
    pub fn windows(&self) -> Vec<Window> {
        [(self.per_second, 1_000), (self.per_minute, 60_000)]
            .into_iter()
            .filter(|(limit, _)| *limit > 0)
            .map(|(limit, window_ms)| Window { quota: limit as u64, window_ms })
            .collect()
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub entries: usize,
    pub users: usize,
    /// Distinct (user, kind) lanes.
    pub lanes: usize,
    /// Human-readable descriptions of every broken window: the lane, the window, the policy
    /// it came from and the times.
    pub violations: Vec<String>,
    /// Task ids that ended (completed or failed) more than once, sorted.
    pub duplicated: Vec<String>,
    /// Expected task ids that never ended (only when expectations were given).
    pub missing: Vec<String>,
    /// Entries counted before their slot.
    pub early: Vec<String>,
    /// Every time more attempts of a lane were in flight than its kind's concurrency allows
    /// (only for kinds given a bound).
    pub in_flight: Vec<String>,
    /// Delivery attempts (entries with `started_at`).
    pub attempts: usize,
    /// Attempts whose task was to be retried (`outcome: "retry"`).
    pub retries: usize,
    /// Tasks whose last attempt failed (`outcome: "failed"`).
    pub failed: usize,
    /// Counted instant (start or completion) minus `slot` of every entry that has a slot,
    /// sorted.
    pub lateness_ms: Vec<i64>,
    /// Tasks ended per user (all kinds), by user id: attempts to be retried are not counted.
    pub per_user: BTreeMap<String, usize>,
    /// Tasks ended per lane, by (user id, kind).
    pub per_lane: BTreeMap<(String, String), usize>,
    /// For entries with a slot, sorted: how long after the earliest instant the rule allowed
    /// *given the lane's actual earlier entries* each was counted (under the task's own
    /// policy and costs, after the lane's previous counted instant: a lane runs in order, and
    /// with a concurrency bound not before a place was free).
    /// Lateness minus this is what a task inherited from a late predecessor (the rule holds on the counted instants: a late
    /// task pushes the next one back); this part is the executor's own delay.
    pub own_delay_ms: Vec<i64>,
}

impl Report {
    /// What makes a log break the rule, by name.
    fn findings(&self) -> [(&'static str, &Vec<String>); 5] {
        [
            ("violations", &self.violations),
            ("duplicated", &self.duplicated),
            ("missing", &self.missing),
            ("early", &self.early),
            ("in_flight", &self.in_flight),
        ]
    }

    pub fn is_clean(&self) -> bool {
        self.findings().iter().all(|(_, found)| found.is_empty())
    }

    /// The summary, then the first few of each finding: what a failed "the log is clean"
    /// assertion prints.
    pub fn problems(&self) -> String {
        const SHOWN: usize = 20;
        let mut text = self.summary();
        for (name, found) in self.findings().iter().filter(|(_, found)| !found.is_empty()) {
            text.push_str(&format!("\n{name} ({}):", found.len()));
            for item in found.iter().take(SHOWN) {
                text.push_str(&format!("\n  {item}"));
            }
        }
        text
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
        // New fields go at the end: tests and the bench find the others by their text.
        format!(
            "entries={} users={} violations={} duplicated={} missing={} early={} lateness_ms p50={} p99={} max={} own_delay_ms p50={} p99={} max={} lanes={} attempts={} retries={} failed={} in_flight={}",
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
            self.lanes,
            self.attempts,
            self.retries,
            self.failed,
            self.in_flight.len(),
        )
    }
}

/// Nearest-rank percentile (p in 0..=100) of sorted `values`.
pub fn percentile<T: Copy>(values: &[T], p: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
    values.get(rank.min(values.len()) - 1).copied()
}

/// Checks `entries` lane by lane, each entry against its own policy (or `rule` when it
/// names none); `expected` (task ids that were acknowledged), when given, must each end
/// exactly once. No concurrency bound: [`check_with_concurrency`] adds one.
pub fn check(entries: &[Entry], rule: Rule, expected: Option<&[String]>) -> Report {
    check_with_concurrency(entries, rule, expected, &BTreeMap::new())
}

/// [`check`], and for every lane of a kind in `concurrency` (kind → n): at most n of the
/// lane's attempts in flight, `[started_at, completed_at]`, at any instant (an attempt that
/// ends in the millisecond another starts does not overlap it).
pub fn check_with_concurrency(
    entries: &[Entry],
    rule: Rule,
    expected: Option<&[String]>,
    concurrency: &BTreeMap<String, usize>,
) -> Report {
    let default_windows = rule.windows();
    let mut report = Report { entries: entries.len(), ..Report::default() };
    let mut lanes: BTreeMap<(&str, &str), Vec<&Entry>> = BTreeMap::new();
    let mut endings: HashMap<&str, usize> = HashMap::new();
    for entry in entries {
        lanes.entry((&entry.user_id, &entry.kind)).or_default().push(entry);
        *report.per_user.entry(entry.user_id.clone()).or_default() += usize::from(entry.ends_task());
        report.attempts += usize::from(entry.started_at.is_some());
        match entry.outcome {
            Some(Outcome::Retry) => report.retries += 1,
            Some(Outcome::Failed) => report.failed += 1,
            None => {}
        }
        if let Some(id) = &entry.task_id
            && entry.ends_task()
        {
            *endings.entry(id).or_default() += 1;
        }
        if let Some(slot) = entry.slot {
            let at = entry.counted_at();
            report.lateness_ms.push(at - slot);
            if at < slot {
                let verb = if entry.started_at.is_some() { "started" } else { "ran" };
                report.early.push(format!(
                    "{} (user {:?} kind {:?}) {verb} at {at} before its slot {slot}",
                    describe(entry),
                    entry.user_id,
                    entry.kind,
                ));
            }
        }
    }
    report.users = report.per_user.len();
    report.lanes = lanes.len();
    for ((user, kind), mut lane) in lanes {
        report.per_lane.insert((user.to_string(), kind.to_string()), lane.iter().filter(|e| e.ends_task()).count());
        // The order of the counted instants; entries counted in the same millisecond keep
        // the log's order (a stable sort).
        lane.sort_by_key(|e| e.counted_at());
        let times: Vec<i64> = lane.iter().map(|e| e.counted_at()).collect();
        // units_before[k]: the costs of the lane's first k entries.
        let mut units_before = Vec::with_capacity(lane.len() + 1);
        units_before.push(0u64);
        for e in &lane {
            units_before.push(units_before[units_before.len() - 1] + e.cost);
        }
        let bound = concurrency.get(kind).copied();
        // The ends of the latest-ending earlier attempts, at most `bound` of them: with all of
        // them in flight, the next attempt had to wait for the first to end.
        let mut latest_ends: BinaryHeap<Reverse<i64>> = BinaryHeap::new();
        for (n, entry) in lane.iter().enumerate() {
            let (windows, source) = match &entry.policy {
                Some(windows) => (windows.as_slice(), "its policy"),
                None => (default_windows.as_slice(), "the default rule"),
            };
            let t = times[n];
            for window in windows {
                let start = t.saturating_sub(window.window_ms);
                // The first of the lane's entries up to n counted after `start`.
                let first = times[..=n].partition_point(|&c| c <= start);
                let units = units_before[n + 1] - units_before[first];
                if units > window.quota {
                    report.violations.push(format!(
                        "user {user:?} kind {kind:?}: {units} units in {} entries within ({start}, {t}] (at {}..{t}), over {} per {} ms of {source}, at {}",
                        n + 1 - first,
                        times[first],
                        window.quota,
                        window.window_ms,
                        describe(entry),
                    ));
                }
            }
            if let Some(slot) = entry.slot {
                let mut allowed = slot;
                if n > 0 {
                    allowed = allowed.max(times[n - 1]);
                }
                for window in windows {
                    // The newest earlier entry j whose costs from j up to n exceed the quota:
                    // n could not run before j's instant + the window.
                    // units_before[n] - units_before[j] + cost > quota, for j < n.
                    let over = units_before[..n].partition_point(|&u| u + window.quota < units_before[n] + entry.cost);
                    if over > 0 {
                        allowed = allowed.max(times[over - 1] + window.window_ms);
                    }
                }
                if let Some(bound) = bound
                    && latest_ends.len() >= bound
                    && let Some(Reverse(first_free)) = latest_ends.peek()
                {
                    allowed = allowed.max(*first_free);
                }
                report.own_delay_ms.push(t - allowed);
            }
            if let (Some(bound), Some(started)) = (bound, entry.started_at) {
                latest_ends.push(Reverse(entry.completed_at.max(started)));
                if latest_ends.len() > bound {
                    latest_ends.pop();
                }
            }
        }
        if let Some(bound) = bound {
            report.in_flight.extend(over_concurrency(user, kind, &lane, bound));
        }
    }
    report.own_delay_ms.sort_unstable();
    report.lateness_ms.sort_unstable();
    report.duplicated = endings.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.to_string()).collect();
    report.duplicated.sort_unstable();
    if let Some(expected) = expected {
        report.missing = expected.iter().filter(|id| !endings.contains_key(id.as_str())).cloned().collect();
    }
    report
}

/// Each attempt of `lane` (in start order) that started while `bound` others were still in
/// flight, described with every attempt then in flight.
fn over_concurrency(user: &str, kind: &str, lane: &[&Entry], bound: usize) -> Vec<String> {
    let mut found = Vec::new();
    // (end, index in lane) of the attempts in flight, the earliest end on top.
    let mut open: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    for (i, entry) in lane.iter().enumerate() {
        let Some(start) = entry.started_at else { continue };
        // An attempt that ended in this millisecond is no longer in flight.
        while open.peek().is_some_and(|Reverse((end, _))| *end <= start) {
            open.pop();
        }
        open.push(Reverse((entry.completed_at.max(start), i)));
        if open.len() > bound {
            let mut flying: Vec<(usize, i64)> = open.iter().map(|Reverse((end, j))| (*j, *end)).collect();
            flying.sort_unstable();
            let flying: Vec<String> = flying
                .iter()
                .map(|(j, end)| format!("{} [{}, {end}]", describe(lane[*j]), lane[*j].counted_at()))
                .collect();
            found.push(format!(
                "user {user:?} kind {kind:?}: {} attempts in flight at {start}, over its concurrency {bound}: {}",
                open.len(),
                flying.join(", ")
            ));
        }
    }
    found
}

/// `task "<id>"` (with its attempt number for a delivery attempt), or the instant of an entry
/// without an id.
fn describe(entry: &Entry) -> String {
    match (&entry.task_id, entry.attempt) {
        (Some(id), Some(attempt)) => format!("task {id:?} attempt {attempt}"),
        (Some(id), None) => format!("task {id:?}"),
        (None, _) if entry.started_at.is_some() => format!("the attempt started at {}", entry.counted_at()),
        (None, _) => format!("the entry completed at {}", entry.completed_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(user: &str, t: i64) -> Entry {
        Entry::new(user, t)
    }

    #[test]
    fn parses_both_log_forms() {
        assert_eq!(parse_line("123-task completed at-1700000000000"), Some(at("123", 1_700_000_000_000)));
        assert_eq!(parse_line("a-task-b-task completed at-5"), Some(at("a-task-b", 5)));
        let json = r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":12}"#;
        let entry = parse_line(json);
        assert_eq!(entry.as_ref().and_then(|e| e.slot), Some(10));
        assert_eq!(entry.as_ref().map(|e| (e.kind.as_str(), e.cost, e.policy.is_none())), Some(("default", 1, true)));
        assert_eq!(parse_line("Serving http://127.0.0.1:3000"), None);
    }

    #[test]
    fn ndjson_kind_cost_and_policy_are_read() {
        let json = r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":12,"kind":"email","cost":3,"policy":"1/1000,20/60000"}"#;
        let Ok(Some(entry)) = parse_entry(json) else { panic!("{json} not read") };
        assert_eq!((entry.kind.as_str(), entry.cost), ("email", 3));
        assert_eq!(
            entry.policy,
            Some(vec![Window { quota: 1, window_ms: 1_000 }, Window { quota: 20, window_ms: 60_000 }])
        );
        let none = r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":12,"kind":"report","cost":1,"policy":""}"#;
        assert_eq!(parse_line(none).and_then(|e| e.policy), Some(vec![]));
        for bad in [
            r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":12,"policy":"1/0"}"#,
            r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":12,"policy":"20"}"#,
            r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":12,"cost":0}"#,
            r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":"soon"}"#,
            r#"{"task_id":"t1","user_id":"u","#,
        ] {
            assert!(parse_entry(bad).is_err(), "{bad} read as {:?}", parse_entry(bad));
        }
        assert_eq!(parse_entry(r#"{"level":"info","msg":"listening"}"#), Ok(None));
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
        let entry = |id: &str, slot, t| Entry { task_id: Some(id.into()), slot: Some(slot), ..Entry::new("u", t) };
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
        let entry = |slot, t| Entry { slot: Some(slot), ..Entry::new("u", t) };
        // The first task ran 50 ms late, so the second could not start before 1_050: its
        // 60 ms lateness is 50 inherited plus 10 of its own.
        let report = check(&[entry(0, 50), entry(1_000, 1_060)], Rule::default(), None);
        assert_eq!(report.lateness_ms, vec![50, 60]);
        assert_eq!(report.own_delay_ms, vec![10, 50]);
    }

    /// A delivery attempt of task `id` in lane ("u", "hook") under 1 per 1 s: started at
    /// `started`, ended at `ended`, with `outcome`.
    fn attempt(id: &str, n: u32, started: i64, ended: i64, outcome: Option<Outcome>) -> Entry {
        Entry {
            task_id: Some(id.into()),
            kind: "hook".into(),
            policy: Some(vec![Window { quota: 1, window_ms: 1_000 }]),
            started_at: Some(started),
            attempt: Some(n),
            outcome,
            ..Entry::new("u", ended)
        }
    }

    #[test]
    fn attempt_fields_are_read() {
        let line = r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":90,"kind":"hook","cost":1,"policy":"1/1000","started_at":12,"attempt":2,"error":"timeout","outcome":"retry"}"#;
        let Ok(Some(entry)) = parse_entry(line) else { panic!("{line} not read") };
        assert_eq!(
            (entry.started_at, entry.attempt, entry.error.as_deref(), entry.outcome, entry.counted_at()),
            (Some(12), Some(2), Some("timeout"), Some(Outcome::Retry), 12)
        );
        assert!(!entry.ends_task());
        let done = r#"{"task_id":"t1","user_id":"u","slot":10,"completed_at":90,"started_at":12,"attempt":3,"status":200,"duration_ms":78}"#;
        let Ok(Some(entry)) = parse_entry(done) else { panic!("{done} not read") };
        assert_eq!((entry.status, entry.duration_ms, entry.outcome), (Some(200), Some(78), None));
        assert!(entry.ends_task());
        for bad in [
            r#"{"task_id":"t1","user_id":"u","completed_at":90,"started_at":12,"outcome":"later"}"#,
            r#"{"task_id":"t1","user_id":"u","completed_at":90,"started_at":"soon"}"#,
            r#"{"task_id":"t1","user_id":"u","completed_at":90,"started_at":12,"attempt":0}"#,
            r#"{"task_id":"t1","user_id":"u","completed_at":90,"outcome":"failed"}"#,
        ] {
            assert!(parse_entry(bad).is_err(), "{bad} read as {:?}", parse_entry(bad));
        }
    }

    #[test]
    fn pulled_attempts_are_read_and_held_to_the_windows_and_concurrency() {
        // As the app logs a pulled kind's attempts: the worker's result and detail (any JSON,
        // here one with fields named like the entry's own), a lapsed claim, a retry on the
        // last attempt that failed the task.
        let lines = [
            r#"{"task_id":"a","user_id":"u","slot":0,"completed_at":400,"kind":"render","cost":1,"policy":"1/1000,3/4000","payload":{"n":1},"attempt":1,"started_at":3,"result":"retry","duration_ms":397,"detail":{"task_id":"x","completed_at":"no"},"outcome":"retry"}"#,
            r#"{"task_id":"b","user_id":"u","slot":1000,"completed_at":7003,"kind":"render","cost":1,"policy":"1/1000,3/4000","attempt":1,"started_at":1003,"error":"lapsed","outcome":"retry"}"#,
            r#"{"task_id":"a","user_id":"u","slot":2000,"completed_at":7100,"kind":"render","cost":1,"policy":"1/1000,3/4000","attempt":2,"started_at":7003,"result":"completed","duration_ms":97,"detail":[1.50,"é"]}"#,
            r#"{"task_id":"b","user_id":"u","slot":8003,"completed_at":8100,"kind":"render","cost":1,"policy":"1/1000,3/4000","attempt":2,"started_at":8003,"result":"retry","duration_ms":97,"outcome":"failed"}"#,
            r#"{"task_id":"c","user_id":"u","slot":9003,"completed_at":9010,"kind":"render","cost":1,"policy":"1/1000,3/4000","attempt":1,"started_at":9003,"result":"failed","duration_ms":7,"detail":null,"outcome":"failed"}"#,
        ];
        let entries: Vec<Entry> = lines
            .iter()
            .map(|l| match parse_entry(l) {
                Ok(Some(entry)) => entry,
                other => panic!("{l} read as {other:?}"),
            })
            .collect();
        let results: Vec<Option<PulledResult>> = entries.iter().map(|e| e.result).collect();
        use PulledResult::{Completed, Failed, Retry};
        assert_eq!(results, [Some(Retry), None, Some(Completed), Some(Retry), Some(Failed)]);
        assert_eq!((entries[1].error.as_deref(), entries[0].counted_at()), (Some("lapsed"), 3));
        let expected = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let one: BTreeMap<String, usize> = [("render".to_string(), 1)].into();
        let report = check_with_concurrency(&entries, Rule::default(), Some(&expected), &one);
        assert!(report.is_clean(), "{}\n{:?}\n{:?}", report.summary(), report.violations, report.in_flight);
        assert_eq!((report.attempts, report.retries, report.failed), (5, 2, 2));
        // The lapsed claim of b held the lane's one place until it lapsed at 7003: a claim
        // at 5000 is over the concurrency, and one 999 ms after a start breaks 1/1000.
        let mut early = entries.clone();
        early[2].started_at = Some(5_000);
        let report = check_with_concurrency(&early, Rule::default(), Some(&expected), &one);
        assert_eq!(report.in_flight.len(), 1, "{:?}", report.in_flight);
        let mut close = entries.clone();
        close[4].started_at = Some(9_002);
        assert_eq!(check(&close, Rule::default(), None).violations.len(), 1);
        for bad in [
            // A word a worker cannot send, a result that disagrees with the outcome, a result
            // beside an HTTP status, a result without a start.
            r#"{"task_id":"t","user_id":"u","completed_at":9,"started_at":1,"result":"done"}"#,
            r#"{"task_id":"t","user_id":"u","completed_at":9,"started_at":1,"result":"completed","outcome":"retry"}"#,
            r#"{"task_id":"t","user_id":"u","completed_at":9,"started_at":1,"result":"failed","outcome":"retry"}"#,
            r#"{"task_id":"t","user_id":"u","completed_at":9,"started_at":1,"result":"failed"}"#,
            r#"{"task_id":"t","user_id":"u","completed_at":9,"started_at":1,"result":"retry"}"#,
            r#"{"task_id":"t","user_id":"u","completed_at":9,"started_at":1,"result":"completed","status":200}"#,
            r#"{"task_id":"t","user_id":"u","completed_at":9,"result":"completed"}"#,
        ] {
            assert!(parse_entry(bad).is_err(), "{bad} read as {:?}", parse_entry(bad));
        }
    }

    #[test]
    fn windows_count_attempt_starts_not_completions() {
        // Completions 5 s apart, starts 500 ms apart: two starts within (−500, 500].
        let close_starts = [attempt("a", 1, 0, 5_000, None), attempt("b", 1, 500, 10_000, None)];
        let report = check(&close_starts, Rule::default(), None);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains(r#"task "b" attempt 1"#), "{:?}", report.violations);
        // Completions 1 ms apart, starts a second apart: clean.
        let far_starts = [attempt("a", 1, 0, 1_500, None), attempt("b", 1, 1_000, 1_501, None)];
        let report = check(&far_starts, Rule::default(), None);
        assert!(report.is_clean(), "{:?}", report.violations);
        assert_eq!((report.attempts, report.retries, report.failed), (2, 0, 0));
    }

    #[test]
    fn a_retried_attempt_counts_in_the_windows() {
        // a's first attempt failed (to be retried); b started 999 ms after it.
        let entries = [
            attempt("a", 1, 0, 100, Some(Outcome::Retry)),
            attempt("b", 1, 999, 1_100, None),
            attempt("a", 2, 2_000, 2_100, None),
        ];
        let report = check(&entries, Rule::default(), None);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains(r#"task "b""#), "{:?}", report.violations);
        let mut later = entries.clone();
        later[1] = attempt("b", 1, 1_000, 1_100, None);
        assert!(check(&later, Rule::default(), None).is_clean());
    }

    #[test]
    fn lateness_early_and_own_delay_use_the_start() {
        let slotted = |started, ended, slot| Entry { slot: Some(slot), ..attempt("a", 1, started, ended, None) };
        // Started 20 ms after its slot, answered 3 s later: 20 ms late.
        let report = check(&[slotted(1_020, 4_000, 1_000)], Rule::default(), None);
        assert_eq!((report.lateness_ms.as_slice(), report.own_delay_ms.as_slice()), (&[20][..], &[20][..]));
        // Started before its slot, answered after it: early.
        let report = check(&[slotted(990, 1_200, 1_000)], Rule::default(), None);
        assert_eq!(report.early.len(), 1, "{:?}", report.early);
    }

    #[test]
    fn a_task_ends_once_whatever_its_retries() {
        let expected = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let entries = [
            attempt("a", 1, 0, 100, Some(Outcome::Retry)),
            attempt("a", 2, 2_000, 2_100, Some(Outcome::Retry)),
            attempt("a", 3, 4_000, 4_100, None),
            attempt("b", 1, 5_000, 5_100, Some(Outcome::Failed)),
            attempt("c", 1, 6_000, 6_100, Some(Outcome::Retry)),
        ];
        let report = check(&entries, Rule::default(), Some(&expected));
        // Three attempts of a, one ending: no duplicate. c was only retried: it never ended.
        assert_eq!((report.duplicated.as_slice(), report.missing.as_slice()), (&[][..], &["c".to_string()][..]));
        assert_eq!((report.attempts, report.retries, report.failed), (5, 3, 1));
        assert_eq!(report.per_lane.get(&("u".to_string(), "hook".to_string())), Some(&2));
        // A task completed and also failed, or completed twice, ended twice.
        let mut twice = entries.to_vec();
        twice.push(attempt("a", 4, 8_000, 8_100, Some(Outcome::Failed)));
        twice.push(attempt("c", 2, 9_000, 9_100, None));
        let report = check(&twice, Rule::default(), Some(&expected));
        assert_eq!((report.duplicated.as_slice(), report.missing.len()), (&["a".to_string()][..], 0));
        assert!(report.summary().ends_with("attempts=7 retries=3 failed=2 in_flight=0"), "{}", report.summary());
    }

    #[test]
    fn attempts_in_flight_are_held_to_the_kinds_concurrency() {
        // Attempts t0, t1, … of lane ("u", "hook") without windows, over `spans`.
        let lane = |spans: &[(i64, i64)]| -> Vec<Entry> {
            let free = |(i, &(s, e)): (usize, &(i64, i64))| Entry {
                policy: Some(vec![]),
                ..attempt(&format!("t{i}"), 1, s, e, None)
            };
            spans.iter().enumerate().map(free).collect()
        };
        let two: BTreeMap<String, usize> = [("hook".to_string(), 2)].into();
        let overlapping = lane(&[(0, 30), (10, 40), (20, 50)]);
        // Three overlap in [20, 30]: t2 starts while t0 and t1 are in flight.
        let report = check_with_concurrency(&overlapping, Rule::default(), None, &two);
        assert_eq!(report.in_flight.len(), 1, "{:?}", report.in_flight);
        let found = &report.in_flight[0];
        assert!(found.contains("3 attempts in flight at 20, over its concurrency 2"), "{found}");
        assert!(found.contains(r#"task "t0" attempt 1 [0, 30]"#), "{found}");
        assert!(!report.is_clean());
        assert!(report.summary().ends_with("in_flight=1"), "{}", report.summary());
        // Without the bound, or with a bound of 3, the same log is clean.
        assert!(check(&overlapping, Rule::default(), None).is_clean());
        let three: BTreeMap<String, usize> = [("hook".to_string(), 3)].into();
        assert!(check_with_concurrency(&overlapping, Rule::default(), None, &three).is_clean());
        // t0 ends in the millisecond t2 starts: never three at once.
        let report = check_with_concurrency(&lane(&[(0, 20), (10, 40), (20, 50)]), Rule::default(), None, &two);
        assert!(report.is_clean(), "{:?}", report.in_flight);
        // Another user's lane of the kind, and another kind, are counted apart.
        let mut apart = overlapping.clone();
        apart[1].user_id = "v".into();
        assert!(check_with_concurrency(&apart, Rule::default(), None, &two).is_clean());
        apart[1].user_id = "u".into();
        apart[2].kind = "other".into();
        assert!(check_with_concurrency(&apart, Rule::default(), None, &two).is_clean());
    }

    #[test]
    fn own_delay_leaves_out_the_wait_for_a_free_place() {
        let slotted = |id: &str, slot, started, ended| Entry {
            slot: Some(slot),
            policy: Some(vec![]),
            ..attempt(id, 1, started, ended, None)
        };
        let one: BTreeMap<String, usize> = [("hook".to_string(), 1)].into();
        // b was due at 0 but a held the only place until 500: b started at 510, 10 ms its own.
        let entries = [slotted("a", 0, 0, 500), slotted("b", 0, 510, 900)];
        let report = check_with_concurrency(&entries, Rule::default(), None, &one);
        assert!(report.is_clean(), "{:?}", report.in_flight);
        assert_eq!((report.lateness_ms.as_slice(), report.own_delay_ms.as_slice()), (&[0, 510][..], &[0, 10][..]));
    }
}
