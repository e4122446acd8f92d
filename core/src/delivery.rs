//! Deliveries, the pure parts: a kind's target (or `pull`: workers claim its tasks) and its
//! limits as configured, what an answer's status means, a backend's `Retry-After`, the request's body (the envelope) and its
//! Standard Webhooks signature (standardwebhooks.com). The component makes the request
//! (`src/delivery.rs`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;

pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;
pub const MIN_TIMEOUT_MS: u32 = 1_000;
pub const MAX_TIMEOUT_MS: u32 = 60_000;
pub const DEFAULT_ATTEMPTS: u32 = 5;
pub const MAX_ATTEMPTS: u32 = 20;
pub const MAX_CONCURRENCY: u32 = 1_000;
/// First attempts that admissions start and make themselves (`start_at_admission` in
/// lib.lua), in flight at once across every replica; past it, admissions leave their tasks
/// to the drainers. Each holds its Spin instance until it ends, and Spin 4.1 pools 1,000
/// instances per process (crates/core/src/lib.rs), so a hanging backend cannot take them all.
pub const ADMISSION_STARTS_MAX: u32 = 512;

/// Where a kind's tasks are delivered, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// An absolute `http` or `https` URL, as written; `None` for a kind whose tasks workers
    /// pull (`"pull": true`: `POST /api/v1/claims`), which the drainer never delivers.
    pub target: Option<String>,
    /// Each attempt's limit.
    pub timeout_ms: u32,
    /// Attempts before the task fails.
    pub attempts: u32,
    /// Attempts of one lane in flight at once; 0 = unlimited.
    pub concurrency: u32,
}

impl Delivery {
    /// A kind's delivery from its object form's fields (absent: the defaults; `target`
    /// `None`: pulled by workers); `at` names the kind in errors (`kinds.email`), and each
    /// error names its field.
    pub fn parse(
        target: Option<&str>,
        timeout: Option<&str>,
        attempts: Option<u64>,
        concurrency: Option<u64>,
        at: &str,
    ) -> Result<Delivery, String> {
        if let Some(target) = target {
            crate::outbound::Destination::parse(target).map_err(|e| format!("{at}.target {target:?}: {e}"))?;
        }
        let timeout_ms = match timeout {
            None => DEFAULT_TIMEOUT_MS,
            Some(text) => parse_timeout(text).map_err(|e| format!("{at}.timeout {text:?}: {e}"))?,
        };
        let bounded = |value: Option<u64>, field: &str, max: u32, default: u32| match value {
            None => Ok(default),
            Some(n) if (1..=u64::from(max)).contains(&n) => Ok(n as u32),
            Some(n) => Err(format!("{at}.{field} {n}: must be from 1 to {max}")),
        };
        Ok(Delivery {
            target: target.map(str::to_string),
            timeout_ms,
            attempts: bounded(attempts, "attempts", MAX_ATTEMPTS, DEFAULT_ATTEMPTS)?,
            concurrency: bounded(concurrency, "concurrency", MAX_CONCURRENCY, 0)?,
        })
    }

    /// What the Lua scripts get in the task record: `<timeout ms>/<attempts>/<concurrency>`
    /// (`"10000/5/0"`; 0 = unlimited), then `/pull` for a kind workers pull.
    pub fn spec(&self) -> String {
        let pulled = if self.target.is_none() { "/pull" } else { "" };
        format!("{}/{}/{}{pulled}", self.timeout_ms, self.attempts, self.concurrency)
    }
}

/// `<n>ms`, `<n>s` or `<n>m`, from 1 s to 60 s.
fn parse_timeout(text: &str) -> Result<u32, String> {
    let ms = parse_duration_ms(text).map_err(|e| format!("a timeout {e}"))?;
    match u32::try_from(ms) {
        Ok(ms) if (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) => Ok(ms),
        _ => Err("a timeout is from 1s to 60s".into()),
    }
}

/// A duration written `<n>ms`, `<n>s` or `<n>m` (a whole number), in ms; too large saturates.
/// The error completes "a <what> ...".
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let (count, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err("is written <n>ms, <n>s or <n>m, like \"10s\"".into());
    };
    // Digits only: Rust's parse would also take a sign.
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is a whole number of ms, s or m".into());
    }
    Ok(count.parse::<u64>().map_or(u64::MAX, |n| n.saturating_mul(unit_ms)))
}

/// What an answer's status does to the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Completed,
    /// Another attempt (the caller also retries a timeout or a connection error).
    Retry,
    Failed,
}

/// 2xx completes; 408, 429 and 5xx are worth another attempt; any other answer fails the
/// task at once (the backend refused this task, and will again).
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Completed,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Failed,
    }
}

/// A `Retry-After` value (delta-seconds or an HTTP-date) as ms from `now_unix_ms`, at least
/// 0; `None` when it is neither.
pub fn retry_after_ms(value: &str, now_unix_ms: i64) -> Option<i64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a long time".
        let seconds = value.parse::<i64>().unwrap_or(i64::MAX);
        return Some(seconds.saturating_mul(1_000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    let at_ms = i64::try_from(at_ms).unwrap_or(i64::MAX);
    Some(at_ms.saturating_sub(now_unix_ms).max(0))
}

/// The request's body: `{"task_id", "user_id", "kind", "cost", "attempt", "slot", "payload"}`,
/// `slot` in Unix ms. `payload` is the JSON text the client sent, inserted as it is (never
/// parsed and written again, so the backend gets the same bytes); absent, `null`.
pub fn envelope(
    task_id: &str,
    user_id: &str,
    kind: &str,
    cost: u32,
    attempt: u32,
    slot_ms: i64,
    payload: Option<&str>,
) -> String {
    format!(
        r#"{{"task_id":{},"user_id":{},"kind":{},"cost":{cost},"attempt":{attempt},"slot":{slot_ms},"payload":{}}}"#,
        json_string(task_id),
        json_string(user_id),
        json_string(kind),
        payload.unwrap_or("null"),
    )
}

fn json_string(text: &str) -> String {
    // Serializing a str cannot fail; the fallback is never taken.
    serde_json::to_string(text).unwrap_or_else(|_| "null".to_string())
}

/// The `delivery_secret`: a Standard Webhooks `whsec_<base64>` key, ready to sign.
#[derive(Clone)]
pub struct Secret {
    mac: Hmac<Sha256>,
}

impl Secret {
    /// `whsec_` then the key in standard base64 (padded). Errors never repeat the text.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or("a secret is written whsec_<base64 of the key>, as Standard Webhooks gives it")?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| "the key after whsec_ is not standard base64 (A-Z a-z 0-9 + /, padded with =)")?;
        if key.is_empty() {
            return Err("the key after whsec_ is empty".into());
        }
        let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| "the key cannot key HMAC-SHA256")?;
        Ok(Secret { mac })
    }

    /// The `webhook-signature` value: `v1,<base64 of HMAC-SHA256 over "<id>.<timestamp>.<body>">`.
    pub fn sign(&self, id: &str, timestamp_s: i64, body: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(format!("{id}.{timestamp_s}.").as_bytes());
        mac.update(body.as_bytes());
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// Never shows the key.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_takes_the_defaults_and_its_spec_carries_them() {
        let d = Delivery::parse(Some("http://mailer.internal:8080/send"), None, None, None, "kinds.email")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.timeout_ms, d.attempts, d.concurrency), (10_000, 5, 0));
        assert_eq!(d.spec(), "10000/5/0");
        assert_eq!(d.target.as_deref(), Some("http://mailer.internal:8080/send"));
        let d = Delivery::parse(Some("https://h/x"), Some("1500ms"), Some(20), Some(1000), "kinds.email")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.spec(), "1500/20/1000");
        // Pulled: the same fields, and the spec says so.
        let d = Delivery::parse(None, Some("30s"), Some(3), Some(2), "kinds.render").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.spec(), "30000/3/2/pull");
        for (text, ms) in [("1s", 1_000), ("60s", 60_000), ("1m", 60_000), ("1000ms", 1_000), ("25s", 25_000)] {
            assert_eq!(parse_timeout(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn bad_delivery_fields_name_the_field() {
        let at = "kinds.email";
        for (timeout, attempts, concurrency, expected) in [
            (Some("999ms"), None, None, r#"kinds.email.timeout "999ms": a timeout is from 1s to 60s"#),
            (Some("61s"), None, None, "from 1s to 60s"),
            (Some("2m"), None, None, "from 1s to 60s"),
            (Some("0s"), None, None, "from 1s to 60s"),
            (Some("99999999999999999999999s"), None, None, "from 1s to 60s"),
            (Some("10"), None, None, "written <n>ms, <n>s or <n>m"),
            (Some("1h"), None, None, "kinds.email.timeout"),
            (Some("+5s"), None, None, "whole number"),
            (Some("s"), None, None, "whole number"),
            (None, Some(0), None, "kinds.email.attempts 0: must be from 1 to 20"),
            (None, Some(21), None, "kinds.email.attempts 21"),
            (None, None, Some(0), "kinds.email.concurrency 0: must be from 1 to 1000"),
            (None, None, Some(1001), "kinds.email.concurrency 1001"),
        ] {
            match Delivery::parse(Some("http://h/"), timeout, attempts, concurrency, at) {
                Err(e) => assert!(e.contains(expected), "{expected}: {e}"),
                Ok(d) => panic!("{expected}: accepted {d:?}"),
            }
        }
        match Delivery::parse(Some("http://user:pw@h/"), None, None, None, at) {
            Err(e) => assert!(e.starts_with(r#"kinds.email.target "http://user:pw@h/": "#), "{e}"),
            Ok(d) => panic!("userinfo accepted: {d:?}"),
        }
    }

    #[test]
    fn statuses_complete_retry_or_fail() {
        for status in [200, 201, 204, 299] {
            assert_eq!(verdict(status), Verdict::Completed, "{status}");
        }
        for status in [408, 429, 500, 502, 503, 599] {
            assert_eq!(verdict(status), Verdict::Retry, "{status}");
        }
        for status in [100, 301, 302, 400, 401, 404, 409, 422, 600] {
            assert_eq!(verdict(status), Verdict::Failed, "{status}");
        }
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(retry_after_ms("120", now), Some(120_000));
        assert_eq!(retry_after_ms(" 0 ", now), Some(0));
        assert_eq!(retry_after_ms("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(30_000));
        // A date already past is now.
        assert_eq!(retry_after_ms("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(0));
        assert_eq!(retry_after_ms("99999999999999999999999", now), Some(i64::MAX));
        for bad in ["", "-5", "1.5", "soon", "+3", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            assert_eq!(retry_after_ms(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn the_envelope_carries_the_payload_as_sent() {
        let payload = r#"{ "to" : "ann@example.com",  "n": 1.50, "tags":["a"] }"#;
        let body = envelope("t-1", "ann \"the\" user", "email", 2, 3, 1_700_000_000_123, Some(payload));
        assert_eq!(
            body,
            r#"{"task_id":"t-1","user_id":"ann \"the\" user","kind":"email","cost":2,"attempt":3,"slot":1700000000123,"payload":{ "to" : "ann@example.com",  "n": 1.50, "tags":["a"] }}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(parsed["user_id"], "ann \"the\" user");
        let body = envelope("t-2", "bob", "default", 1, 1, 0, None);
        assert!(body.ends_with(r#""slot":0,"payload":null}"#), "{body}");
    }

    #[test]
    fn the_signature_matches_an_independent_hmac() {
        // Expected value computed with Python's standard library, independently of this code:
        //   key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        //   base64.b64encode(hmac.new(key, b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}',
        //                             hashlib.sha256).digest())
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, r#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }

    #[test]
    fn bad_secrets_say_what_is_wrong_without_repeating_it() {
        for (text, expected) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "written whsec_"),
            ("whsec_", "empty"),
            ("whsec_not*base64!", "not standard base64"),
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "not standard base64"),
        ] {
            match Secret::parse(text) {
                Err(e) => {
                    assert!(e.contains(expected), "{text}: {e}");
                    assert!(!e.contains(text.trim_start_matches("whsec_")) || text == "whsec_", "{e}");
                }
                Ok(_) => panic!("{text} was accepted"),
            }
        }
    }
}
