//! Workers that pull (README "Workers that pull"): the bodies of `POST /api/v1/claims` and
//! `POST /api/v1/task/{id}/outcome`, checked before anything is stored, each refusal a message
//! for the 400.

use crate::delivery::parse_duration_ms;
use crate::request::whole_number;
use crate::scripts::Ended;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most tasks one claim call takes.
pub const MAX_CLAIMS: u32 = 100;
/// Longest long poll.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Longest `retry_after` a worker may ask for: a day, as for a backend's `Retry-After`.
pub const MAX_RETRY_AFTER_MS: u64 = 24 * 3_600_000;
/// Largest `detail` (its JSON text) an outcome may carry.
pub const MAX_DETAIL: usize = 2 * 1024;
/// Largest body of either route.
pub const MAX_PULL_BODY: usize = 4 * 1024;

/// A `POST /api/v1/claims` body: `{"kind", "max" (1..100, default 1), "wait" ("0s".."30s",
/// default "0s")}`. The kind is checked against the configuration by the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    pub kind: String,
    pub max: u32,
    pub wait_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenClaim {
    kind: Option<String>,
    max: Option<serde_json::Value>,
    wait: Option<String>,
}

impl ClaimRequest {
    pub fn parse(body: &[u8]) -> Result<ClaimRequest, String> {
        let shape = r#"the body must be a JSON object {"kind": "<pulled kind>", "max": 1..100, "wait": "0s".."30s"}"#;
        if first_byte(body) != Some(b'{') {
            return Err(shape.to_string());
        }
        let written: WrittenClaim = serde_json::from_slice(body).map_err(|e| format!("{shape}: {e}"))?;
        let kind = written.kind.ok_or_else(|| format!("kind is missing: {shape}"))?;
        // `null` is as absent, and a whole number may be written `3.0`, as on the task route.
        let max = match written.max {
            None | Some(serde_json::Value::Null) => 1,
            Some(v) => match v.as_number().and_then(whole_number) {
                Some(n) if (1..=u64::from(MAX_CLAIMS)).contains(&n) => n as u32,
                _ => return Err(format!("max {v}: must be a whole number from 1 to {MAX_CLAIMS}")),
            },
        };
        let wait_ms = match written.wait {
            None => 0,
            Some(text) => match parse_duration_ms(&text) {
                Ok(ms) if ms <= MAX_WAIT_MS => ms,
                Ok(_) => return Err(format!("wait {text:?}: at most 30s")),
                Err(e) => return Err(format!("wait {text:?}: a wait {e}")),
            },
        };
        Ok(ClaimRequest { kind, max, wait_ms })
    }
}

/// A `POST /api/v1/task/{id}/outcome` body: `{"claim", "result": "completed" | "retry" |
/// "failed", "detail" (any JSON, kept as sent), "retry_after" ("<n>ms|s|m", with "retry")}`.
#[derive(Debug, PartialEq, Eq)]
pub struct OutcomeRequest {
    pub claim: String,
    pub result: Ended,
    /// The detail's JSON text as sent; `null` is none.
    pub detail: Option<String>,
    pub retry_after_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenOutcome<'a> {
    claim: Option<String>,
    result: Option<String>,
    #[serde(borrow)]
    detail: Option<&'a RawValue>,
    retry_after: Option<String>,
}

impl OutcomeRequest {
    pub fn parse(body: &[u8]) -> Result<OutcomeRequest, String> {
        let shape = r#"the body must be a JSON object {"claim": "<token>", "result": "completed" | "retry" | "failed", "detail": <any JSON>, "retry_after": "30s"}"#;
        if first_byte(body) != Some(b'{') {
            return Err(shape.to_string());
        }
        let written: WrittenOutcome = serde_json::from_slice(body).map_err(|e| format!("{shape}: {e}"))?;
        let claim = written.claim.filter(|c| !c.is_empty()).ok_or_else(|| format!("claim is missing: {shape}"))?;
        let result = match written.result.as_deref() {
            Some("completed") => Ended::Completed,
            Some("retry") => Ended::Retry,
            Some("failed") => Ended::Failed,
            Some(other) => return Err(format!("result {other:?}: must be \"completed\", \"retry\" or \"failed\"")),
            None => return Err(format!("result is missing: {shape}")),
        };
        let detail = written.detail.map(|raw| raw.get().to_string()).filter(|text| text != "null");
        if let Some(text) = &detail
            && text.len() > MAX_DETAIL
        {
            return Err(format!("detail is {} bytes of JSON: at most {MAX_DETAIL}", text.len()));
        }
        let retry_after_ms = match (written.retry_after, result) {
            (None, _) => 0,
            (Some(text), Ended::Retry) => match parse_duration_ms(&text) {
                Ok(ms) if ms <= MAX_RETRY_AFTER_MS => ms,
                Ok(_) => return Err(format!("retry_after {text:?}: at most 24h (1440m)")),
                Err(e) => return Err(format!("retry_after {text:?}: a retry_after {e}")),
            },
            (Some(_), _) => return Err("retry_after goes with \"result\": \"retry\" only".to_string()),
        };
        Ok(OutcomeRequest { claim, result, detail, retry_after_ms })
    }
}

fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_bodies() {
        let parse = |s: &str| ClaimRequest::parse(s.as_bytes());
        assert_eq!(parse(r#"{"kind":"render"}"#), Ok(ClaimRequest { kind: "render".into(), max: 1, wait_ms: 0 }));
        assert_eq!(
            parse(r#" {"kind":"render","max":100,"wait":"30s"}"#),
            Ok(ClaimRequest { kind: "render".into(), max: 100, wait_ms: 30_000 })
        );
        assert_eq!(parse(r#"{"kind":"r","wait":"250ms"}"#).map(|c| c.wait_ms), Ok(250));
        // As the contract's `integer` and its `null`s read them.
        assert_eq!(parse(r#"{"kind":"r","max":47.0}"#).map(|c| c.max), Ok(47));
        assert_eq!(parse(r#"{"kind":"r","max":null,"wait":null}"#).map(|c| (c.max, c.wait_ms)), Ok((1, 0)));
        for (body, expected) in [
            (r#"{"max":1}"#, "kind is missing"),
            (r#"{"kind":"r","max":0}"#, "max 0: must be a whole number from 1 to 100"),
            (r#"{"kind":"r","max":101}"#, "max 101"),
            (r#"{"kind":"r","max":2.5}"#, "max 2.5"),
            (r#"{"kind":"r","max":"3"}"#, r#"max "3""#),
            (r#"{"kind":"r","wait":"31s"}"#, r#"wait "31s": at most 30s"#),
            (r#"{"kind":"r","wait":"1m"}"#, "at most 30s"),
            (r#"{"kind":"r","wait":"5"}"#, r#"wait "5": a wait is written"#),
            (r#"{"kind":"r","wait":"-1s"}"#, "whole number"),
            (r#"{"kind":"r","waits":"1s"}"#, "unknown field `waits`"),
            (r#"{"kind":5}"#, "invalid type"),
            (r#"["r"]"#, "must be a JSON object"),
            ("", "must be a JSON object"),
        ] {
            match parse(body) {
                Err(e) => assert!(e.contains(expected), "{body}: {e}"),
                Ok(c) => panic!("{body} accepted: {c:?}"),
            }
        }
    }

    #[test]
    fn outcome_bodies() {
        let parse = |s: &str| OutcomeRequest::parse(s.as_bytes());
        assert_eq!(
            parse(r#"{"claim":"n.1","result":"completed","detail":{"rows": [1, 2]}}"#),
            Ok(OutcomeRequest {
                claim: "n.1".into(),
                result: Ended::Completed,
                detail: Some(r#"{"rows": [1, 2]}"#.into()),
                retry_after_ms: 0
            })
        );
        let retry = parse(r#"{"claim":"n.1","result":"retry","retry_after":"2m","detail":null}"#);
        assert_eq!(retry.map(|o| (o.result, o.retry_after_ms, o.detail)), Ok((Ended::Retry, 120_000, None)));
        assert_eq!(parse(r#"{"claim":"n.1","result":"failed"}"#).map(|o| o.result), Ok(Ended::Failed));
        // A `null` retry_after is none, whatever the result.
        let null = parse(r#"{"claim":"n.1","result":"failed","retry_after":null}"#);
        assert_eq!(null.map(|o| (o.result, o.retry_after_ms)), Ok((Ended::Failed, 0)));
        let big = format!(r#"{{"claim":"n","result":"failed","detail":"{}"}}"#, "x".repeat(MAX_DETAIL));
        for (body, expected) in [
            (r#"{"result":"completed"}"#, "claim is missing"),
            (r#"{"claim":"","result":"completed"}"#, "claim is missing"),
            (r#"{"claim":"n"}"#, "result is missing"),
            (r#"{"claim":"n","result":"done"}"#, r#"result "done": must be"#),
            (r#"{"claim":"n","result":"completed","retry_after":"1s"}"#, "with \"result\": \"retry\" only"),
            (r#"{"claim":"n","result":"retry","retry_after":"1441m"}"#, "at most 24h"),
            (r#"{"claim":"n","result":"retry","retry_after":"soon"}"#, r#"retry_after "soon""#),
            (r#"{"claim":"n","result":"retry","extra":1}"#, "unknown field `extra`"),
            (big.as_str(), "at most 2048"),
            ("null", "must be a JSON object"),
        ] {
            match parse(body) {
                Err(e) => assert!(e.contains(expected), "{body}: {e}"),
                Ok(o) => panic!("{body} accepted: {o:?}"),
            }
        }
    }
}
