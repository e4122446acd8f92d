//! The `policies` variable (an operator's JSON, but read by every instance): `Policies::parse`
//! never panics; on success every kind resolves for every tier without panicking, each
//! policy's windows are in range, and its `spec()` (what the Lua scripts and the log carry)
//! spells the same windows, which parse back to the same policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use task_core::policy::{MAX_QUOTA, MAX_WINDOW_MS, MIN_WINDOW_MS, Policies, Policy};

/// `"<q>/<ms>,..."` as (quota, window ms) pairs.
fn spec_windows(spec: &str) -> Vec<(u32, i64)> {
    if spec.is_empty() {
        return Vec::new();
    }
    spec.split(',')
        .map(|part| {
            let (q, ms) = part.split_once('/').unwrap_or_else(|| panic!("spec part {part:?}"));
            (
                q.parse().unwrap_or_else(|e| panic!("{spec:?}: {e}")),
                ms.parse().unwrap_or_else(|e| panic!("{spec:?}: {e}")),
            )
        })
        .collect()
}

fn check(policy: &Policy) {
    let windows: Vec<(u32, i64)> = policy.windows().iter().map(|w| (w.quota, w.window_ms)).collect();
    for &(q, ms) in &windows {
        assert!((1..=MAX_QUOTA).contains(&q) && (MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&ms), "window {q}/{ms}");
    }
    assert_eq!(spec_windows(policy.spec()), windows);
    assert_eq!(policy.named().count(), windows.len());
    // Every window length is whole seconds, so the spec can be written back as the
    // configuration writes it.
    let written: Vec<String> = windows.iter().map(|(q, ms)| format!("{q}/{}s", ms / 1000)).collect();
    let again = Policy::parse(&written, "again").unwrap_or_else(|e| panic!("{written:?}: {e}"));
    assert_eq!(again.windows(), policy.windows());
    assert_eq!(policy.max_cost().map(|w| w.quota), windows.iter().map(|w| w.0).min());
    assert!(policy.history() <= MAX_QUOTA && policy.longest_ms() <= MAX_WINDOW_MS);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policies) = Policies::parse(text, Policy::legacy(1, 20)) else { return };
    let kinds: Vec<&str> = policies.kinds().collect();
    assert!(kinds.contains(&"default"), "{kinds:?}");
    let tiers: Vec<String> = policies.tier_names().split(", ").map(str::to_string).collect();
    for kind in &kinds {
        // The built-in tier, every configured tier, and one that is not configured.
        for tier in [None, Some("not-a-tier")].into_iter().chain(tiers.iter().map(|t| Some(t.as_str()))) {
            let policy =
                policies.resolve(kind, tier).unwrap_or_else(|| panic!("kind {kind} does not resolve for {tier:?}"));
            check(policy);
        }
        let (entries, ms) = policies.lane_history(kind);
        assert!(entries <= MAX_QUOTA && ms <= MAX_WINDOW_MS);
    }
    let _ = (policies.history(), policies.kind_names());
});
