//! A backend's `Retry-After` header (bytes from the network, read by the drainer after a
//! delivery attempt): `retry_after_ms` never panics, never answers a negative delay, reads
//! delta-seconds as that many seconds (saturating), and an HTTP-date in the past as 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use task_core::delivery::retry_after_ms;

fuzz_target!(|data: &[u8]| {
    // The drainer reads the header only when it is text.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let now_ms = 1_796_000_000_000;
    let Some(ms) = retry_after_ms(text, now_ms) else { return };
    assert!(ms >= 0, "{text:?} gave {ms}");
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let expected = trimmed.parse::<i64>().map_or(i64::MAX, |s| s.saturating_mul(1_000));
        assert_eq!(ms, expected, "{text:?}");
    }
    // The same date read later is never further away.
    if let Some(later) = retry_after_ms(text, now_ms + 60_000) {
        assert!(later <= ms, "{text:?}: {later} later, {ms} now");
    }
});
