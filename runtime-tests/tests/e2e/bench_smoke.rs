//! A short run of the benchmark binary, so that it cannot rot (the full run is a README
//! command, not part of CI).

use std::process::Command;

#[test]
fn the_benchmark_runs_and_prints_its_table() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench")).arg("--smoke").output();
    let output = output.unwrap_or_else(|e| panic!("cannot run bench: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for scenario in [
        "saturation, do-nothing component, 1 replica",
        "saturation, app, 1 replica",
        "admission, 1 replica",
        "admission, 3 replica",
        "hot user, 3 replicas, redis ledger",
        "hot user, 3 replicas, kv ledger, lossy CAS",
        "memory, 1 replica, 10 users x 3 tasks, no payload",
        "memory, 1 replica, 10 users x 3 tasks, a 2048 B payload",
        "scale, 3 replicas",
    ] {
        assert!(stdout.contains(scenario), "no {scenario:?} row in:\n{stdout}");
    }
    assert!(stdout.contains("slots exact: yes") && !stdout.contains("slots exact: NO"), "{stdout}");
    assert!(stdout.contains("app ÷ do-nothing = "), "no saturation ratio in:\n{stdout}");
}
