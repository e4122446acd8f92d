//! What a request may carry, checked before anything is stored, each refusal a message for
//! the 400 (or the size for the 413): a user id in a body or a path (a `UserId`, by its one
//! rule), a task's body, the Idempotency-Key, percent-encoded ids, the JSON media
//! types and the log's cursor. Every parser here is one that network bytes reach, and each
//! has a fuzz target (`fuzz/`).

use crate::policy::{DEFAULT_KIND, MAX_QUOTA, Policies};
use crate::user::{MAX_USER_ID_CHARS, NotUserId, UserId};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Largest accepted request body (413 above it).
pub const MAX_BODY: usize = 4 * 1024;
/// Largest task payload: its JSON text as sent, in bytes (413 above it).
pub const MAX_PAYLOAD: usize = 2 * 1024;
/// Longest Idempotency-Key, in (visible ASCII) characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Most units one task may cost: the largest quota any window can have (a task over its own
/// policy's smallest quota is refused by admission, which knows the user's tier).
pub const MAX_COST: u32 = MAX_QUOTA;

/// An Idempotency-Key header's bytes, if they are 1–128 visible ASCII characters.
pub fn check_idempotency_key(bytes: &[u8]) -> Result<String, String> {
    if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// A validated `POST /api/v1/task` body.
#[derive(Debug, PartialEq)]
pub struct TaskBody {
    /// `None` when the body names no user: the caller's identity decides (`auth.rs`).
    pub user_id: Option<UserId>,
    /// One the configuration defines (`default` when the body names none).
    pub kind: String,
    /// Units, 1 to `MAX_COST` (1 when the body names none).
    pub cost: u32,
    /// The payload's JSON text exactly as sent (`null` or absent: none).
    pub payload: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// A 400, with what is wrong.
    Invalid(String),
    /// A 413: the payload's size in bytes.
    PayloadTooLarge(usize),
}

/// The body's members; any others are ignored.
#[derive(Deserialize)]
struct Members<'a> {
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    kind: Option<Value>,
    cost: Option<Value>,
}

/// The body of a new task: an optional `user_id` (`user_id_of`); an optional `kind` (a string naming a kind of `policies`); an
/// optional `cost` (an integer from 1 to `MAX_COST`); and an optional `payload`, any JSON
/// value of at most `MAX_PAYLOAD` bytes as sent. The payload is kept as sent (its text, not
/// a re-serialisation) so that key order and number precision come back unchanged.
pub fn parse_task_body(body: &[u8], policies: &Policies) -> Result<TaskBody, BodyError> {
    let invalid = BodyError::Invalid;
    // A struct also deserialises from a JSON array: only an object may name the members.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let fields: Members = match (first, serde_json::from_slice::<Members>(body)) {
        (_, Err(e)) if e.is_syntax() || e.is_eof() => return Err(invalid(format!("the body is not valid JSON: {e}"))),
        (Some(b'{'), Ok(fields)) => fields,
        (Some(b'{'), Err(e)) => return Err(invalid(format!("the body is not a valid task: {e}"))),
        _ => return Err(invalid(r#"the body must be a JSON object such as {"user_id": "alice"}"#.to_string())),
    };
    let user_id = fields.user_id.map(user_id_of).transpose().map_err(invalid)?;
    let kind = match fields.kind {
        None | Some(Value::Null) => DEFAULT_KIND.to_string(),
        Some(Value::String(kind)) if policies.is_kind(&kind) => kind,
        Some(Value::String(kind)) => {
            return Err(invalid(format!(
                "kind {kind:?} is not one of the configured kinds: {}",
                policies.kind_names()
            )));
        }
        Some(other) => return Err(invalid(format!("kind must be a string, not {}", json_type(&other)))),
    };
    let cost = match fields.cost {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) => match whole_number(&n) {
            Some(units) if (1..=u64::from(MAX_COST)).contains(&units) => units as u32,
            _ => return Err(invalid(format!("cost must be a whole number of units from 1 to {MAX_COST}, not {n}"))),
        },
        Some(other) => return Err(invalid(format!("cost must be a whole number of units, not {}", json_type(&other)))),
    };
    let payload = fields.payload.map(|p| p.get().to_string());
    if let Some(size) = payload.as_ref().map(String::len).filter(|&n| n > MAX_PAYLOAD) {
        return Err(BodyError::PayloadTooLarge(size));
    }
    Ok(TaskBody { user_id, kind, cost, payload })
}

/// A `user_id` member: a string of 1–128 characters, or a JSON integer (the contract's
/// `integer`) taken as its decimal text of at most 128 digits: as sent, which JSON's grammar
/// (no leading zeros) makes the one decimal form of the number, but for `-0`, which is `0`,
/// and an integral number written with a fraction or exponent (`17.0`), exact below 2^53.
pub fn user_id_of(raw: &RawValue) -> Result<UserId, String> {
    let text = raw.get();
    let id = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|e| format!("user_id is not a valid string: {e}"))?
    } else if text == "-0" {
        "0".to_string()
    } else if is_integer_literal(text) {
        match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => text.to_string(),
        }
    } else if let Some(n) =
        serde_json::from_str::<f64>(text).ok().filter(|n| n.fract() == 0.0 && n.abs() < 2f64.powi(53))
    {
        // `17.0` or `1.7e1`: an integer as JSON Schema counts them (exact below 2^53).
        format!("{}", n as i64)
    } else {
        let what = serde_json::from_str::<Value>(text).map(|v| json_type(&v)).unwrap_or("not JSON");
        let what = if what == "a number" { "a number with a fraction or an exponent" } else { what };
        return Err(format!("user_id must be a string or an integer, not {what}"));
    };
    UserId::parse(id).map_err(|e| match e {
        NotUserId::Empty => "user_id must not be empty".to_string(),
        NotUserId::TooLong => format!("user_id must be at most {MAX_USER_ID_CHARS} characters"),
    })
}

/// A non-negative whole number however it is written (`3`, `3.0`, `3e0`), as the contract's
/// `integer` is (JSON Schema counts `3.0` as an integer).
pub fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
}

/// `-?[0-9]+`: a JSON number without fraction or exponent.
fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `application/json`, or any `+json` type, with or without parameters.
pub fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A path's user id: percent-decoded (`+` stays `+`), valid UTF-8, a `UserId`.
pub fn decode_user_id(encoded: &str) -> Option<UserId> {
    percent_decode(encoded, false).and_then(|id| UserId::parse(id).ok())
}

/// A percent-encoded query value (with `plus_is_space`, `+` is a space, as forms send it)
/// or path segment; `None` if it is not valid UTF-8 once decoded.
pub fn percent_decode(value: &str, plus_is_space: bool) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The largest Redis stream id.
pub const LAST_STREAM_ID: &str = "18446744073709551615-18446744073709551615";

/// A Redis stream id: `<ms>-<seq>`, each a 64-bit unsigned decimal, leading zeros allowed as
/// Redis allows them (Redis refuses a larger one with an error that is the client's fault,
/// not an outage). The contract's pattern for `after` says the same (the fuzz target
/// `log_cursor` checks that they agree).
pub fn parse_stream_id(s: &str) -> Option<(u64, u64)> {
    let number =
        |p: &str| if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) { p.parse::<u64>().ok() } else { None };
    let (ms, seq) = s.split_once('-')?;
    Some((number(ms)?, number(seq)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::test_rng::XorShift;

    fn policies() -> Policies {
        let json = r#"{"kinds": {"email": ["5/60s"], "report": ["1/10s", "100/24h"]}}"#;
        Policies::parse(json, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse(body: &[u8]) -> Result<TaskBody, BodyError> {
        parse_task_body(body, &policies())
    }

    fn user_id(body: &[u8]) -> Result<String, BodyError> {
        parse(body).map(|task| task.user_id.map_or_else(|| "<none>".to_string(), UserId::into_string))
    }

    #[test]
    fn user_ids_of_every_accepted_shape() {
        assert_eq!(user_id(br#"{"user_id":"123"}"#), Ok("123".to_string()));
        assert_eq!(user_id(br#"{"user_id":123}"#), Ok("123".to_string()));
        assert_eq!(user_id(br#" {"user_id":-5,"extra":true}"#), Ok("-5".to_string()));
        let emoji = "😀".repeat(128);
        assert_eq!(user_id(format!(r#"{{"user_id":"{emoji}"}}"#).as_bytes()), Ok(emoji));
        assert_eq!(user_id(br#"{"user_id":"a\u0000b\n"}"#), Ok("a\0b\n".to_string()));
        // Any JSON integer, however long, as its decimal text; up to 64 bits as before.
        let long = "123456789012345678901234567890";
        assert_eq!(user_id(format!(r#"{{"user_id":{long}}}"#).as_bytes()), Ok(long.to_string()));
        assert_eq!(user_id(format!(r#"{{"user_id":-{long}}}"#).as_bytes()), Ok(format!("-{long}")));
        assert_eq!(user_id(br#"{"user_id":18446744073709551615}"#), Ok("18446744073709551615".to_string()));
        assert_eq!(user_id(br#"{"user_id":-0}"#), Ok("0".to_string()));
        assert_eq!(user_id(br#"{"user_id":17.0}"#), Ok("17".to_string()));
        assert_eq!(user_id(br#"{"user_id":1.7e1}"#), Ok("17".to_string()));
        // None named (or null): the caller's identity decides (auth.rs).
        assert_eq!(user_id(b"{}"), Ok("<none>".to_string()));
        assert_eq!(user_id(br#"{"user_id":null}"#), Ok("<none>".to_string()));
    }

    #[test]
    fn every_wrong_shape_is_an_error() {
        let long = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129));
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            br#"["alice", null]"#,
            b"\"user\"",
            b"null",
            br#"{"user_id":""}"#,
            br#"{"user_id":1.5}"#,
            br#"{"user_id":1e300}"#,
            br#"{"user_id":-}"#,
            br#"{"user_id":true}"#,
            br#"{"user_id":["a"]}"#,
            br#"{"user_id":{"a":1}}"#,
            long.as_bytes(),
            b"{\"user_id\":\"a\"",
            br#"{"user_id":"a"} x"#,
            br#"{"user_id":"a","payload":}"#,
            br#"{"user_id":"a","user_id":"b"}"#,
        ] {
            assert!(matches!(parse(body), Err(BodyError::Invalid(_))), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn payloads_are_kept_as_sent_and_bounded() {
        let sent = r#"{"z": 1, "a": [1.0, 12345678901234567890123, "\u00e9"]}"#;
        let body = format!(r#"{{"user_id":"u","payload":{sent}}}"#);
        assert_eq!(
            parse(body.as_bytes()),
            Ok(TaskBody {
                user_id: UserId::parse("u").ok(),
                kind: "default".into(),
                cost: 1,
                payload: Some(sent.to_string())
            })
        );
        for (body, payload) in [
            (r#"{"user_id":"u"}"#, None),
            (r#"{"user_id":"u","payload":null}"#, None),
            (r#"{"user_id":"u","payload":0}"#, Some("0")),
        ] {
            assert_eq!(parse(body.as_bytes()).map(|t| t.payload), Ok(payload.map(str::to_string)), "{body}");
        }
        // The limit is on the payload's own text: a string of n characters is n + 2 bytes.
        let at_limit = format!(r#"{{"user_id":"u","payload":"{}"}}"#, "x".repeat(MAX_PAYLOAD - 2));
        assert!(parse(at_limit.as_bytes()).is_ok());
        let over = format!(r#"{{"user_id":"u","payload":"{}"}}"#, "x".repeat(MAX_PAYLOAD - 1));
        assert_eq!(parse(over.as_bytes()), Err(BodyError::PayloadTooLarge(MAX_PAYLOAD + 1)));
    }

    /// 20,000 random bodies spliced from JSON fragments, wrong types, escapes and junk
    /// bytes: parsing never panics, and whatever it accepts is a 1–128 character id that
    /// came from a `user_id` member, with a payload that is valid JSON.
    #[test]
    fn random_bodies_parse_or_fail_cleanly() {
        let pieces: [&[u8]; 26] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"user_id\"",
            b"\"user\"",
            b":",
            b",",
            b"\"",
            b"\"a\"",
            b"123",
            b"-1.5e9",
            b"null",
            b"true",
            b"\\u0000",
            b"\\ud800",
            b"\\n",
            "😀".as_bytes(),
            b"\xff\xfe",
            b" ",
            b"\0",
            b"{\"user_id\":",
            b"99999999999999999999999",
            b"\"x\"}",
            b"\"payload\":",
            b",\"payload\":{\"k\":[1,2]}",
        ];
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let body: Vec<u8> = (0..rng.next(10)).flat_map(|_| rng.pick(&pieces).iter().copied()).collect();
            if let Ok(task) = parse(&body) {
                accepted += 1;
                if let Some(id) = task.user_id {
                    assert!(
                        (1..=MAX_USER_ID_CHARS).contains(&id.chars().count()),
                        "{:?} -> {id:?}",
                        String::from_utf8_lossy(&body)
                    );
                    assert!(body.windows(9).any(|w| w == b"\"user_id\""), "{:?}", String::from_utf8_lossy(&body));
                }
                if let Some(payload) = task.payload {
                    assert!(serde_json::from_str::<Value>(&payload).is_ok(), "{payload:?}");
                }
            }
        }
        // The generator does reach the accepting path, so both branches are exercised.
        assert!(accepted > 0);
    }

    #[test]
    fn kinds_and_costs() {
        let task = |body: &str| parse(body.as_bytes()).map(|t| (t.kind, t.cost));
        assert_eq!(task(r#"{"user_id":"u"}"#), Ok(("default".to_string(), 1)));
        assert_eq!(task(r#"{"user_id":"u","kind":null,"cost":null}"#), Ok(("default".to_string(), 1)));
        assert_eq!(task(r#"{"user_id":"u","kind":"email","cost":3}"#), Ok(("email".to_string(), 3)));
        assert_eq!(task(r#"{"user_id":"u","cost":1000}"#), Ok(("default".to_string(), 1000)));
        assert_eq!(task(r#"{"user_id":"u","cost":234.0}"#), Ok(("default".to_string(), 234)));
        assert_eq!(task(r#"{"user_id":"u","cost":1e3}"#), Ok(("default".to_string(), 1000)));
        for (body, says) in [
            (r#"{"user_id":"u","kind":"sms"}"#, "default, email, report"),
            (r#"{"user_id":"u","kind":7}"#, "kind must be a string"),
            (r#"{"user_id":"u","cost":0}"#, "from 1 to 1000"),
            (r#"{"user_id":"u","cost":1001}"#, "from 1 to 1000"),
            (r#"{"user_id":"u","cost":-1}"#, "from 1 to 1000"),
            (r#"{"user_id":"u","cost":1.5}"#, "from 1 to 1000"),
            (r#"{"user_id":"u","cost":1e300}"#, "from 1 to 1000"),
            (r#"{"user_id":"u","cost":"2"}"#, "whole number of units"),
            (r#"{"user_id":"u","cost":99999999999999999999999}"#, "from 1 to 1000"),
        ] {
            match task(body) {
                Err(BodyError::Invalid(detail)) => assert!(detail.contains(says), "{body}: {detail}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/problem+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/x-www-form-urlencoded"));
        assert!(!is_json_media_type(""));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("alice", true), Some("alice".to_string()));
        assert_eq!(percent_decode("a%20b+c", true), Some("a b c".to_string()));
        assert_eq!(percent_decode("a%20b+c", false), Some("a b+c".to_string()));
        assert_eq!(percent_decode("%F0%9F%98%80%3A%2A", true), Some("😀:*".to_string()));
        assert_eq!(percent_decode("%00%0A", true), Some("\0\n".to_string()));
        assert_eq!(percent_decode("%", true), None);
        assert_eq!(percent_decode("%4", true), None);
        assert_eq!(percent_decode("%zz", true), None);
        assert_eq!(percent_decode("%+1", true), None);
        assert_eq!(percent_decode("%FF", true), None);
    }

    #[test]
    fn stream_ids() {
        assert_eq!(parse_stream_id("1700000000000-0"), Some((1_700_000_000_000, 0)));
        assert_eq!(parse_stream_id("0000000000000000000000000007-01"), Some((7, 1)));
        assert_eq!(parse_stream_id(LAST_STREAM_ID), Some((u64::MAX, u64::MAX)));
        for bad in [
            "1700000000000",
            "-",
            "1-2-3",
            "abc-1",
            "18446744073709551616-0",
            "0-18446744073709551616",
            "+1-0",
            "1-+0",
            "1-",
        ] {
            assert_eq!(parse_stream_id(bad), None, "{bad}");
        }
    }
}
