//! schemathesis (property-based API testing, from PyPI) against the app's own OpenAPI document
//! over real HTTP: it generates requests from the contract, valid and invalid, and checks every
//! answer against it (`--checks all`, but for one check that is wrong for this API, below).
//! The document is the one the host serves, unpatched: it names this host's kinds, tiers and
//! security itself. `runtime-tests/schemathesis.toml` bounds the run and lists the answers that
//! depend on state or on limits a schema cannot state; `runtime-tests/schemathesis_hooks.py`
//! only keeps out header bytes Spin refuses before the app runs, and shortens a worker's long
//! poll to 50 ms. Any finding fails the test, with schemathesis's report.
//!
//! schemathesis lives in a venv that `runtime-tests/test.sh` creates (`target/schemathesis-venv`).

use crate::support;

use std::process::Command;
use support::{Host, HostOptions, Redis, repo_root};

const TOKEN: &str = "schemathesis-admin-token";

#[test]
fn schemathesis_finds_nothing_against_the_openapi_document() {
    let root = repo_root();
    let schemathesis = root.join("target/schemathesis-venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run runtime-tests/test.sh, which installs schemathesis there",
        schemathesis.display()
    );
    let redis = Redis::start();
    // Several kinds and tiers, each window admitting 1000 units so that every cost the contract
    // allows can run (a cost over the smallest quota is a 422 that depends on the configuration);
    // a kind workers pull, so that the workers' routes are in the document; the admin token so
    // that the admin routes are exercised past their 401.
    let policies = r#"{"kinds": {"default": ["1000/1s"], "email": ["1000/60s"], "report": ["1000/10s", "1000/24h"],
        "render": {"windows": ["1000/1s"], "pull": true}},
        "tiers": {"pro": {"email": ["1000/10s"]}, "team": {"report": ["1000/1s"]}, "free": {}}}"#;
    let host = Host::start(
        &redis,
        &HostOptions {
            variables: vec![("admin_token".into(), TOKEN.into()), ("policies".into(), policies.into())],
            ..HostOptions::default()
        },
    );
    let scratch = std::env::temp_dir().join(format!("task-api-schemathesis-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    let output = Command::new(&schemathesis)
        .env("SCHEMATHESIS_HOOKS", root.join("runtime-tests/schemathesis_hooks.py"))
        .arg("--config-file")
        .arg(root.join("runtime-tests/schemathesis.toml"))
        .arg("--no-color")
        .args(["run", &format!("http://{}/api/v1/openapi.json", host.addr)])
        .args(["--checks", "all", "--header", &format!("Authorization: Bearer {TOKEN}")])
        // DELETE /api/v1/task/{id} cancels a task: its record stays readable, as cancelled, for a
        // day (and a repeated DELETE answers the same), which this check takes for a resource
        // that outlived its deletion.
        .args(["--exclude-checks", "use_after_free"])
        // Its example database and reports stay out of the repository.
        .current_dir(&scratch)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", schemathesis.display()));
    let _ = std::fs::remove_dir_all(&scratch);
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{report}\nhost stderr:\n{}",
        output.status,
        host.stderr_text()
    );
    // A run that tested nothing, or not every operation, would also exit 0.
    let number_after = |label: &str| {
        let line = report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} in the report:\n{report}"));
        line.trim().split('/').map(|n| n.trim().parse::<usize>().unwrap_or(0)).collect::<Vec<_>>()
    };
    let (selected, tested) = (number_after("Selected:"), number_after("Tested:"));
    assert!(
        selected.len() == 2 && selected[0] == selected[1] && selected[0] > 0,
        "not every operation was selected:\n{report}"
    );
    assert_eq!(tested[..], selected[..1], "not every operation was tested:\n{report}");
}
