//! Rate-limit fields, from the windows of the task's policy.
//!
//! - `RateLimit-Policy` and `RateLimit` of draft-ietf-httpapi-ratelimit-headers-11
//!   (https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/11/): each a
//!   Structured Field List (RFC 9651) of Items whose value is the window's name as a String,
//!   with Integer parameters `q` (quota, in units) and `w` (window, seconds) for the policy,
//!   and `r` (remaining) and `t` (seconds until more quota is made available: the used unit
//!   that leaves the window first) for the current state. A policy without windows sends
//!   neither field.
//! - The de-facto `X-RateLimit-Limit`, `-Remaining` and `-Reset` that clients of the seeds
//!   read (express-rate-limit's legacy headers, GitHub's): one window only, the one that binds
//!   soonest (least remaining; of those, the one that frees its next unit last), with
//!   `Reset` in epoch seconds when that unit is free. The `x_ratelimit_headers` variable turns
//!   them off.
//!
//! `GET /api/v1/users/{id}` shows the same windows as JSON (`RateWindow`).

use crate::policy::Policy;
use crate::slot::{self, Spent};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

/// One window as draft-11 names its parts (`policy`, `q`, `w`; `r`, `t`).
#[derive(Serialize)]
pub struct RateWindow<'a> {
    pub policy: &'a str,
    pub q: u32,
    pub w: i64,
    pub r: u32,
    /// Left out when nothing in the window is used (the draft makes `t` optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t: Option<i64>,
}

/// What is left of each window of `policy` at `now`, after the lane's `recent` tasks.
pub fn rate_windows<'p>(policy: &'p Policy, recent: &[Spent], now: i64) -> Vec<RateWindow<'p>> {
    slot::remaining(policy.windows(), recent, now)
        .into_iter()
        .zip(policy.named())
        .map(|(left, (name, window))| RateWindow {
            policy: name,
            q: window.quota,
            w: window.window_ms / 1000,
            r: left.remaining,
            t: left.reset_s,
        })
        .collect()
}

/// The rate-limit fields of an answer about a task of `policy`.
pub fn rate_limit_headers(policy: &Policy, recent: &[Spent], now: i64, x_ratelimit: bool) -> HeaderMap {
    let windows = rate_windows(policy, recent, now);
    let mut headers = HeaderMap::new();
    if windows.is_empty() {
        return headers;
    }
    let policy_field: Vec<String> = windows.iter().map(|w| format!("\"{}\";q={};w={}", w.policy, w.q, w.w)).collect();
    let left_field: Vec<String> = windows
        .iter()
        .map(|w| match w.t {
            Some(t) => format!("\"{}\";r={};t={t}", w.policy, w.r),
            None => format!("\"{}\";r={}", w.policy, w.r),
        })
        .collect();
    insert(&mut headers, HeaderName::from_static("ratelimit-policy"), &policy_field.join(", "));
    insert(&mut headers, HeaderName::from_static("ratelimit"), &left_field.join(", "));
    if x_ratelimit && let Some(binding) = windows.iter().min_by_key(|w| (w.r, std::cmp::Reverse(w.t.unwrap_or(0)))) {
        let reset_epoch_s = (now + binding.t.unwrap_or(0) * 1000 + 999) / 1000;
        insert(&mut headers, HeaderName::from_static("x-ratelimit-limit"), &binding.q.to_string());
        insert(&mut headers, HeaderName::from_static("x-ratelimit-remaining"), &binding.r.to_string());
        insert(&mut headers, HeaderName::from_static("x-ratelimit-reset"), &reset_epoch_s.to_string());
    }
    headers
}

pub fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
        headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[test]
    fn the_default_policy_keeps_its_window_names() {
        let headers = rate_limit_headers(&Policy::legacy(1, 20), &[(10_000, 1)], 10_000, true);
        assert_eq!(field(&headers, "ratelimit-policy"), r#""burst";q=1;w=1, "minute";q=20;w=60"#);
        assert_eq!(field(&headers, "ratelimit"), r#""burst";r=0;t=1, "minute";r=19;t=60"#);
        // The burst window binds (nothing left): its unit is free again at 11 s.
        assert_eq!((field(&headers, "x-ratelimit-limit"), field(&headers, "x-ratelimit-remaining")), ("1", "0"));
        assert_eq!(field(&headers, "x-ratelimit-reset"), "11");
        assert!(rate_limit_headers(&Policy::legacy(1, 20), &[], 0, false).get("x-ratelimit-limit").is_none());
        assert!(rate_limit_headers(&Policy::legacy(0, 0), &[], 0, true).is_empty());
    }

    #[test]
    fn configured_windows_are_named_as_written_and_count_units() {
        let written = ["3/10s".to_string(), "100/24h".to_string()];
        let Ok(policy) = Policy::parse(&written, "kinds.report") else { panic!("policy") };
        let headers = rate_limit_headers(&policy, &[(0, 2)], 4_000, true);
        assert_eq!(field(&headers, "ratelimit-policy"), r#""10s";q=3;w=10, "24h";q=100;w=86400"#);
        assert_eq!(field(&headers, "ratelimit"), r#""10s";r=1;t=6, "24h";r=98;t=86396"#);
        // Both have room; the 10 s window has less of it.
        assert_eq!((field(&headers, "x-ratelimit-limit"), field(&headers, "x-ratelimit-remaining")), ("3", "1"));
        assert_eq!(field(&headers, "x-ratelimit-reset"), "10");
    }
}
