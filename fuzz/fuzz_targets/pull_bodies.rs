//! A worker's claim and outcome bodies (bytes from the network): `ClaimRequest::parse` and
//! `OutcomeRequest::parse` never panic, and what they accept is inside the documented bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use task_core::pull::{ClaimRequest, MAX_CLAIMS, MAX_DETAIL, MAX_RETRY_AFTER_MS, MAX_WAIT_MS, OutcomeRequest};
use task_core::scripts::Ended;

fuzz_target!(|data: &[u8]| {
    if let Ok(ask) = ClaimRequest::parse(data) {
        assert!((1..=MAX_CLAIMS).contains(&ask.max) && ask.wait_ms <= MAX_WAIT_MS, "{ask:?}");
    }
    if let Ok(told) = OutcomeRequest::parse(data) {
        assert!(!told.claim.is_empty());
        assert!(told.detail.as_ref().is_none_or(|d| d.len() <= MAX_DETAIL && d != "null"));
        assert!(told.retry_after_ms <= MAX_RETRY_AFTER_MS);
        assert!(told.retry_after_ms == 0 || told.result == Ended::Retry, "{told:?}");
    }
});
