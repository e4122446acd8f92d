//! `/metrics` in the Prometheus text format (version 0.0.4). The counters live in one Redis
//! hash, shared by every replica and updated by the scripts that do the counted work
//! (`queue.rs`), so they are exact across replicas and survive restarts of the app.

use crate::scripts::{DELIVERY_BUCKETS_MS, LATENESS_BUCKETS_MS};
use std::collections::BTreeMap;
use std::fmt::Write;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the counters read from Redis (`Queue::metrics`).
pub fn render(counters: &[(String, i64)]) -> String {
    let fields: BTreeMap<&str, i64> = counters.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let get = |name: &str| fields.get(name).copied().unwrap_or(0);
    let mut out = String::new();

    let name = family(
        &mut out,
        "task_api_http_responses_total",
        "counter",
        "HTTP answers by status (a 503 for an unreachable Redis cannot be counted in Redis).",
    );
    // Admissions and completions are counted per kind (`admitted:<placement>:<kind>`,
    // `completed:<kind>`); the totals are their sums (and, for data from before kinds
    // existed, the plain `admitted:<placement>` and `completed` counters).
    let per_kind = |prefix: &str| -> BTreeMap<&str, i64> {
        fields.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.strip_prefix(':')?, *v))).collect()
    };
    // An admission's 200 or 202 is counted only as the admission (per kind): add those.
    let mut statuses: BTreeMap<&str, i64> =
        fields.iter().filter_map(|(k, v)| Some((k.strip_prefix("status:")?, *v))).collect();
    for (placement, status) in [("inline", "200"), ("queued", "202")] {
        let admitted: i64 = per_kind(&format!("admitted:{placement}")).values().sum();
        if admitted != 0 {
            *statuses.entry(status).or_insert(0) += admitted;
        }
    }
    for (code, value) in statuses {
        let _ = writeln!(out, "{name}{{status=\"{code}\"}} {value}");
    }
    let name =
        family(&mut out, "task_api_admissions_total", "counter", "Admitted tasks: run inline (200) or queued (202).");
    for placement in ["inline", "queued"] {
        let field = format!("admitted:{placement}");
        let total = get(&field) + per_kind(&field).values().sum::<i64>();
        let _ = writeln!(out, "{name}{{placement=\"{placement}\"}} {total}");
    }
    let name = family(&mut out, "task_api_kind_admissions_total", "counter", "Admitted tasks per kind and placement.");
    for placement in ["inline", "queued"] {
        for (kind, value) in per_kind(&format!("admitted:{placement}")) {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\",placement=\"{placement}\"}} {value}");
        }
    }
    let completed_per_kind = per_kind("completed");
    let name = family(&mut out, "task_api_kind_completions_total", "counter", "Completed tasks per kind.");
    for (kind, value) in &completed_per_kind {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {value}");
    }
    single(&mut out, "task_api_queue_depth", "gauge", "Tasks waiting for their slot, all users.", get("queued"));
    single(&mut out, "task_api_waiting_users", "gauge", "Users with at least one task waiting.", get("waiting_users"));

    let name = family(
        &mut out,
        "task_api_lateness_seconds",
        "histogram",
        "How long after its slot each task ran, or each delivery attempt started (started_at - slot).",
    );
    let mut cumulative = 0;
    for bound in LATENESS_BUCKETS_MS {
        cumulative += get(&format!("lateness_le:{bound}"));
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", seconds(bound));
    }
    // Every start is counted: a task run at once starts as it completes, a delivery at each
    // attempt's claim (its completion is counted again as delivered).
    let completed = get("completed") + completed_per_kind.values().sum::<i64>();
    let sum = |prefix: &str| per_kind(prefix).values().sum::<i64>();
    let starts = completed - sum("delivered") + sum("claimed");
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {starts}");
    let _ = writeln!(out, "{name}_sum {}", seconds(get("lateness_sum_ms")));
    let _ = writeln!(out, "{name}_count {starts}");

    let name = family(
        &mut out,
        "task_api_kind_deliveries_total",
        "counter",
        "Delivery attempts (and pulled claims) per kind that ended: delivered (a 2xx, or a worker's completed), retried, or failed (the task failed).",
    );
    for outcome in ["delivered", "retried", "failed"] {
        for (kind, value) in per_kind(outcome) {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\",outcome=\"{outcome}\"}} {value}");
        }
    }
    let claims_help = "Delivery attempts started per kind (a pulled kind's: claims by workers).";
    let name = family(&mut out, "task_api_kind_claims_total", "counter", claims_help);
    for (kind, value) in per_kind("claimed") {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {value}");
    }
    let lapsed_help = "Delivery attempts whose outcome was never recorded before their claim lapsed (retried).";
    single(&mut out, "task_api_lapsed_claims_total", "counter", lapsed_help, get("lapsed"));
    let name = family(&mut out, "task_api_kind_lapsed_claims_total", "counter", "Lapsed claims per kind (retried).");
    for (kind, value) in per_kind("lapsed") {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {value}");
    }
    let stale_help = "Outcomes refused or ignored because their claim was no longer open (a worker's answers 409).";
    single(&mut out, "task_api_stale_outcomes_total", "counter", stale_help, get("stale_outcomes"));
    let name = family(
        &mut out,
        "task_api_delivery_duration_seconds",
        "histogram",
        "From a delivery's request to its answer's head, per kind (attempts without an answer are not in it); for a pulled kind, from the claim to the worker's outcome.",
    );
    for (kind, count) in per_kind("delivery_count") {
        let mut cumulative = 0;
        for bound in DELIVERY_BUCKETS_MS {
            cumulative += get(&format!("delivery_le:{bound}:{kind}"));
            let _ = writeln!(out, "{name}_bucket{{kind=\"{kind}\",le=\"{}\"}} {cumulative}", seconds(bound));
        }
        let _ = writeln!(out, "{name}_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{kind=\"{kind}\"}} {}", seconds(get(&format!("delivery_sum_ms:{kind}"))));
        let _ = writeln!(out, "{name}_count{{kind=\"{kind}\"}} {count}");
    }

    let cancelled_help = "Queued tasks cancelled by DELETE /api/v1/task/{id} (they never run).";
    single(&mut out, "task_api_cancelled_total", "counter", cancelled_help, get("cancelled"));
    let retries_help = "kv ledger: compare-and-swap attempts that did not commit (another admission of the user got in first; the redis ledger never conflicts).";
    single(&mut out, "task_api_cas_retries_total", "counter", retries_help, get("cas_retries"));
    let violations_help = "Tasks the executor found running against a window of their policy (must stay 0).";
    single(&mut out, "task_api_rule_violations_total", "counter", violations_help, get("rule_violations"));
    let drain_help = "Executor script calls by the drainers (each runs every task due at that instant).";
    single(&mut out, "task_api_drain_calls_total", "counter", drain_help, get("drain_calls"));
    out
}

/// Writes a metric family's HELP and TYPE lines; returns its name.
fn family(out: &mut String, name: &str, kind: &str, help: &str) -> String {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name.to_string()
}

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: i64) {
    let name = family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Milliseconds as a Prometheus seconds value.
fn seconds(ms: i64) -> String {
    let text = format!("{}.{:03}", ms / 1000, (ms % 1000).abs());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if ms < 0 && !text.starts_with('-') { format!("-{text}") } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let text = render(&counters(&[
            ("lateness_le:1", 3),
            ("lateness_le:20", 2),
            ("completed:default", 4),
            ("completed:email", 2),
            ("lateness_sum_ms", 7_042),
        ]));
        assert!(text.contains("task_api_lateness_seconds_bucket{le=\"0.001\"} 3\n"), "{text}");
        assert!(text.contains("task_api_lateness_seconds_bucket{le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("task_api_lateness_seconds_bucket{le=\"0.02\"} 5\n"), "{text}");
        assert!(text.contains("task_api_lateness_seconds_bucket{le=\"5\"} 5\n"), "{text}");
        assert!(text.contains("task_api_lateness_seconds_bucket{le=\"+Inf\"} 6\n"), "{text}");
        assert!(text.contains("task_api_lateness_seconds_sum 7.042\n"), "{text}");
        assert!(text.contains("task_api_lateness_seconds_count 6\n"), "{text}");
        assert!(text.contains("task_api_kind_completions_total{kind=\"email\"} 2\n"), "{text}");
    }

    #[test]
    fn statuses_and_gauges() {
        let text = render(&counters(&[
            ("status:200", 4),
            ("status:404", 1),
            ("queued", 9),
            ("waiting_users", 2),
            ("admitted:inline:default", 3),
            ("admitted:inline:email", 1),
            ("admitted:queued:email", 5),
        ]));
        assert!(text.contains("task_api_admissions_total{placement=\"inline\"} 4\n"), "{text}");
        // Admissions answered 200 (inline) or 202 (queued), counted only as admissions.
        assert!(text.contains("task_api_http_responses_total{status=\"200\"} 8\n"), "{text}");
        assert!(text.contains("task_api_http_responses_total{status=\"202\"} 5\n"), "{text}");
        assert!(text.contains("task_api_admissions_total{placement=\"queued\"} 5\n"), "{text}");
        assert!(text.contains("task_api_kind_admissions_total{kind=\"email\",placement=\"queued\"} 5\n"), "{text}");

        assert!(text.contains("task_api_http_responses_total{status=\"404\"} 1\n"), "{text}");
        assert!(text.contains("task_api_queue_depth 9\n"), "{text}");
        assert!(text.contains("task_api_waiting_users 2\n"), "{text}");
        assert!(text.contains("task_api_rule_violations_total 0\n"), "{text}");
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap_or("");
            let base = family.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }

    #[test]
    fn deliveries_per_kind() {
        let text = render(&counters(&[
            ("completed:mail", 5),
            ("completed:default", 3),
            ("delivered:mail", 5),
            ("retried:mail", 2),
            ("failed:hook", 1),
            ("claimed:mail", 7),
            ("lapsed", 1),
            ("lapsed:mail", 1),
            ("stale_outcomes", 2),
            ("delivery_le:5:mail", 1),
            ("delivery_le:100:mail", 5),
            ("delivery_count:mail", 7),
            ("delivery_sum_ms:mail", 420),
        ]));
        assert!(text.contains("task_api_kind_deliveries_total{kind=\"mail\",outcome=\"delivered\"} 5\n"), "{text}");
        assert!(text.contains("task_api_kind_deliveries_total{kind=\"mail\",outcome=\"retried\"} 2\n"), "{text}");
        assert!(text.contains("task_api_kind_deliveries_total{kind=\"hook\",outcome=\"failed\"} 1\n"), "{text}");
        assert!(text.contains("task_api_kind_claims_total{kind=\"mail\"} 7\n"), "{text}");
        assert!(text.contains("task_api_lapsed_claims_total 1\n"), "{text}");
        assert!(text.contains("task_api_kind_lapsed_claims_total{kind=\"mail\"} 1\n"), "{text}");
        assert!(text.contains("task_api_stale_outcomes_total 2\n"), "{text}");
        // Starts: 3 tasks run at once and 7 delivery attempts (5 of which completed).
        assert!(text.contains("task_api_lateness_seconds_count 10\n"), "{text}");
        let name = "task_api_delivery_duration_seconds";
        assert!(text.contains(&format!("{name}_bucket{{kind=\"mail\",le=\"0.005\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{kind=\"mail\",le=\"0.1\"}} 6\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{kind=\"mail\",le=\"+Inf\"}} 7\n")), "{text}");
        assert!(text.contains(&format!("{name}_sum{{kind=\"mail\"}} 0.42\n")), "{text}");
    }

    #[test]
    fn seconds_from_ms() {
        assert_eq!(seconds(1), "0.001");
        assert_eq!(seconds(250), "0.25");
        assert_eq!(seconds(1_000), "1");
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(12_345), "12.345");
        assert_eq!(seconds(-5), "-0.005");
    }
}
