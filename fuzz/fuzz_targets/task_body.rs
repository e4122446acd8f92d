//! `POST /api/v1/task` bodies: `parse_task_body` never panics, and what it accepts is a task
//! the rest of the component can rely on (an id, if any, of 1–128 characters; a configured
//! kind; a cost in range; a payload that is JSON within its limit) and that the same fields,
//! written plainly, parse to again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use task_core::policy::{Policies, Policy};
use task_core::request::{MAX_COST, MAX_PAYLOAD, parse_task_body};
use task_core::user::MAX_USER_ID_CHARS;

/// The policies of the unit tests in src/http/tasks.rs: kinds default, email and report.
static POLICIES: LazyLock<Policies> = LazyLock::new(|| {
    let json = r#"{"kinds": {"email": ["5/60s"], "report": ["1/10s", "100/24h"]}}"#;
    Policies::parse(json, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("the fixed policies: {e}"))
});

/// Whether `text` is one JSON value, at any depth.
fn is_json(text: &str) -> bool {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    serde::de::Deserialize::deserialize(&mut de).map(|_: serde::de::IgnoredAny| ()).is_ok() && de.end().is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(task) = parse_task_body(data, &POLICIES) else { return };
    // No user_id is allowed: the caller's identity then decides (src/auth.rs).
    if let Some(id) = &task.user_id {
        let chars = id.chars().count();
        assert!((1..=MAX_USER_ID_CHARS).contains(&chars), "user_id of {chars} characters");
    }
    assert!(POLICIES.is_kind(&task.kind), "kind {:?}", task.kind);
    assert!((1..=MAX_COST).contains(&task.cost), "cost {}", task.cost);
    if let Some(payload) = &task.payload {
        assert!(payload.len() <= MAX_PAYLOAD, "payload of {} bytes", payload.len());
        assert!(is_json(payload), "payload {payload:?} is not JSON");
    }
    // The accepted fields, written again as a plain body, are the same task.
    let json = |text: &str| serde_json::to_string(text).unwrap_or_else(|e| panic!("{e}"));
    let id = task.user_id.as_deref().map(|id| format!(r#""user_id":{},"#, json(id))).unwrap_or_default();
    let payload = task.payload.as_deref().map(|p| format!(r#","payload":{p}"#)).unwrap_or_default();
    let again = format!(r#"{{{id}"kind":{},"cost":{}{payload}}}"#, json(&task.kind), task.cost);
    assert_eq!(parse_task_body(again.as_bytes(), &POLICIES).as_ref(), Ok(&task), "{again}");
});
