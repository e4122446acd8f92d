//! A short run of the benchmark binary, so that it cannot rot (the full run is a command in
//! docs/numbers.md, not part of CI): every scenario prints its row, and the numbers in it
//! are sane. No threshold on how fast: that is the bench's to report, not a test's to flake on.

use std::collections::HashMap;
use std::process::Command;

/// The scenarios `bench --smoke` runs, by the start of their row's title.
const SCENARIOS: &[&str] = &[
    "saturation, do-nothing component, 1 replica",
    "saturation, app, 1 replica",
    "saturation, app, three-window weighted policy, 1 replica",
    "saturation, app, auth = jwt (HS256), 1 replica",
    "saturation, app, auth = api_key, 1 replica",
    "admission, 1 replica",
    "admission, 3 replicas",
    "hot user, 3 replicas, redis ledger",
    // (On the host's lossy compare-and-swap; under TASK_API_SPIN, Spin's own.)
    "hot user, 3 replicas, kv ledger, ",
    "memory, 1 replica, 10 users x 3 tasks, no payload",
    "memory, 1 replica, 10 users x 3 tasks, a 2048 B payload",
    "keep-alive, app, 1 replica, POST /api/v1/task",
    "keep-alive, app, 1 replica, GET /api/v1/task/{id}",
    "keep-alive, app, 1 replica, GET /healthz",
    "keep-alive, do-nothing component, Content-Length",
    "keep-alive, do-nothing component, chunked",
    "scale, 3 replicas, 20 users x 3 tasks",
    "delivery, 3 replicas, 50 users x 3 tasks, 100 ms backend",
    "delivery, 3 replicas, 50 users x 3 tasks, 100 ms backend, another kind hanging",
    "delivery, 3 replicas, 50 users x 3 tasks, 100 ms backend, submitted as they come due",
    "delivery, 3 replicas, 50 users x 3 tasks, 100 ms backend, another kind hanging, submitted as they come due",
    "pull, 3 replicas, 50 users x 3 tasks, 2 worker loops",
    "pull, 3 replicas, 50 users x 3 tasks, 2 worker loops, submitted as they come due",
];

/// The Markdown table's rows, each a map from column title to cell.
fn table(stdout: &str) -> Vec<HashMap<String, String>> {
    let cells = |line: &str| -> Vec<String> {
        let line = line.trim().trim_start_matches('|').trim_end_matches('|');
        line.split('|').map(|c| c.trim().to_string()).collect()
    };
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("| scenario |"));
    let header = lines.next().map(cells).unwrap_or_else(|| panic!("no table in:\n{stdout}"));
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let row = cells(l);
            assert_eq!(row.len(), header.len(), "a row of another width than the header: {l}");
            header.iter().cloned().zip(row).collect()
        })
        .collect()
}

/// The cell `column` of `row` as a number (panics naming the row when it is not one).
fn number(row: &HashMap<String, String>, column: &str) -> f64 {
    let cell = row.get(column).unwrap_or_else(|| panic!("no column {column:?} in {row:?}"));
    let value: f64 = cell.parse().unwrap_or_else(|_| panic!("{column} {cell:?} is not a number in {row:?}"));
    assert!(value.is_finite(), "{column} {cell:?} in {row:?}");
    value
}

#[test]
fn the_benchmark_runs_and_its_numbers_are_sane() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench")).arg("--smoke").output();
    let output = output.unwrap_or_else(|e| panic!("cannot run bench: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let rows = table(&stdout);

    for scenario in SCENARIOS {
        assert!(rows.iter().any(|r| r["scenario"].starts_with(scenario)), "no {scenario:?} row in:\n{stdout}");
    }
    for row in &rows {
        let title = &row["scenario"];
        assert_eq!(number(row, "errors"), 0.0, "{title}");
        assert!(number(row, "achieved req/s") > 0.0, "{title}: {row:?}");
        let latencies = ["p50 ms", "p90 ms", "p99 ms", "max ms"].map(|c| number(row, c));
        assert!(latencies[0] > 0.0 && latencies.is_sorted(), "{title}: p50 ≤ p90 ≤ p99 ≤ max, all > 0: {latencies:?}");
    }

    // The scale run waits for its tasks and checks the log: each acknowledged task ran once,
    // on the rule.
    let scale = rows.iter().find(|r| r["scenario"].starts_with("scale,")).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(number(scale, "tasks submitted"), 60.0, "{scale:?}");
    assert_eq!(number(scale, "tasks run"), number(scale, "tasks submitted"), "{scale:?}");
    for column in ["lost", "doubled", "violations", "early"] {
        assert_eq!(number(scale, column), 0.0, "{column}: {scale:?}");
    }
    let lateness: Vec<f64> = scale["lateness p50/p99/max ms"].split('/').filter_map(|v| v.parse().ok()).collect();
    assert!(lateness.len() == 3 && lateness.is_sorted() && lateness[0] >= 0.0, "lateness {lateness:?}");

    // Deliveries: every task delivered and completed once, the windows held on the claimed
    // starts, no attempt arriving twice at the backend.
    for row in rows.iter().filter(|r| r["scenario"].starts_with("delivery,")) {
        assert_eq!(number(row, "tasks run"), number(row, "tasks submitted"), "{row:?}");
        for column in ["lost", "doubled", "violations", "early"] {
            assert_eq!(number(row, column), 0.0, "{column}: {row:?}");
        }
        assert!(row["notes"].contains("duplicate arrivals of one attempt: 0;"), "{row:?}");
    }
    // Pulled: every task claimed and completed once, on the windows, no attempt claimed twice.
    for row in rows.iter().filter(|r| r["scenario"].starts_with("pull,")) {
        assert_eq!(number(row, "tasks run"), number(row, "tasks submitted"), "{row:?}");
        for column in ["lost", "doubled", "violations", "early"] {
            assert_eq!(number(row, column), 0.0, "{column}: {row:?}");
        }
        assert!(row["notes"].contains("duplicate claims of one attempt: 0;"), "{row:?}");
    }
    for row in rows.iter().filter(|r| r["scenario"].starts_with("hot user,")) {
        assert!(row["notes"].contains("slots exact: yes"), "{row:?}");
    }
    // Every keep-alive request was answered, and the notes count the slow ones among them.
    for row in rows.iter().filter(|r| r["scenario"].starts_with("keep-alive,")) {
        assert!(row["notes"].contains(" of 20 answers took "), "{row:?}");
    }

    let ratio = stdout
        .lines()
        .find(|l| l.starts_with("saturation: app "))
        .and_then(|l| l.rsplit_once("app ÷ do-nothing = "))
        .and_then(|(_, r)| r.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no saturation ratio in:\n{stdout}"));
    assert!(ratio.is_finite() && ratio > 0.0, "app ÷ do-nothing = {ratio}");
}
