//! The `after=` cursor of `GET /api/v1/log`: `parse_stream_id` never panics and accepts
//! exactly what Redis takes as a stream id (two 64-bit unsigned decimals joined by `-`,
//! leading zeros allowed), with their values; and exactly that is what the contract's pattern
//! for `after` (src/openapi.json) allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regex::Regex;
use std::sync::LazyLock;
use task_core::request::parse_stream_id;

/// The pattern of `after` in the document the app serves.
static CONTRACT: LazyLock<Regex> = LazyLock::new(|| {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../src/openapi.json")).unwrap_or_else(|e| panic!("{e}"));
    let parameters = doc["paths"]["/api/v1/log"]["get"]["parameters"].as_array().cloned().unwrap_or_default();
    let after = parameters.iter().find(|p| p["name"] == "after").unwrap_or_else(|| panic!("no after parameter"));
    let pattern = after["schema"]["pattern"].as_str().unwrap_or_else(|| panic!("after has no pattern"));
    Regex::new(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"))
});

/// A decimal of at most 64 bits, worked out digit by digit rather than with `parse`.
fn as_u64(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.bytes().try_fold(0u64, |n, b| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let expected = text.split_once('-').and_then(|(ms, seq)| Some((as_u64(ms)?, as_u64(seq)?)));
    assert_eq!(parse_stream_id(text), expected, "{text:?}");
    let allowed = CONTRACT.is_match(text);
    assert_eq!(allowed, expected.is_some(), "{text:?} against the contract's pattern {}", CONTRACT.as_str());
});
