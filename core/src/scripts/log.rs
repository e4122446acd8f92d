//! The task log stream's entries (written by `complete` in `lib.lua`), as `XRANGE` gives
//! them.

use crate::scripts::reply::{Cursor, Reply, Unexpected, parse_int};
use crate::scripts::shared::{Attempt, Completion, Logged, cost, kind, payload};
use std::collections::HashMap;

/// The fields a log entry can have.
const LOG_FIELDS: [&str; 16] = [
    "task_id",
    "user_id",
    "slot",
    "completed_at",
    "payload",
    "kind",
    "cost",
    "policy",
    "started_at",
    "attempt",
    "status",
    "error",
    "result",
    "detail",
    "duration_ms",
    "outcome",
];

/// `XRANGE`, flattened by the host: each entry is its id, then its field/value pairs (four
/// before kinds existed, seven since, one more with a payload). Entries are told apart by
/// reading pairs while the next item is a field name: a value is always consumed as a value,
/// and an entry id (`<ms>-<seq>`) is never a field name. Each entry with its stream id.
pub fn log_page(reply: &[Reply]) -> Result<Vec<(String, Completion)>, Unexpected> {
    let mut reply = Cursor::new(reply);
    let mut page = Vec::new();
    while !reply.at_end() {
        let id = reply.text()?;
        let mut fields = HashMap::new();
        while let Some(name) = reply.peek_bytes().and_then(|b| LOG_FIELDS.iter().find(|f| f.as_bytes() == b)) {
            reply.bytes()?;
            fields.insert(*name, reply.bytes()?);
        }
        let text = |name: &str| String::from_utf8_lossy(fields.get(name).copied().unwrap_or_default()).into_owned();
        let int = |name: &str| {
            parse_int(fields.get(name).copied().unwrap_or_default())
                .ok_or_else(|| reply.fail(format_args!("log entry {id}: {name} is not an integer")))
        };
        let completion = Completion {
            task_id: text("task_id"),
            user_id: text("user_id"),
            slot: int("slot")?,
            completed_at: int("completed_at")?,
            kind: kind(fields.get("kind").copied()),
            cost: cost(&reply, fields.get("cost").copied())?,
            policy: fields.get("policy").map(|p| String::from_utf8_lossy(p).into_owned()),
            payload: payload(&reply, fields.get("payload").copied())?,
            detail: payload(&reply, fields.get("detail").copied())?,
            delivery: match fields.get("started_at") {
                None => None,
                Some(_) => {
                    let optional = |name: &str| fields.get(name).map(|b| String::from_utf8_lossy(b).into_owned());
                    Some(Logged {
                        attempt: u32::try_from(int("attempt")?)
                            .map_err(|_| reply.fail(format_args!("log entry {id}: attempt out of range")))?,
                        ended: Attempt {
                            started_at: int("started_at")?,
                            status: optional("status").and_then(|s| s.parse().ok()),
                            error: optional("error"),
                            result: optional("result"),
                            duration_ms: optional("duration_ms").and_then(|s| s.parse().ok()),
                        },
                        outcome: optional("outcome"),
                    })
                }
            },
        };
        page.push((id, completion));
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::super::reply::tests::text;
    use super::*;

    #[test]
    fn log_pages() {
        // Entries with and without a payload, and a user id and a payload that look like field
        // names or entry ids, follow each other in one flattened reply.
        let entry = |id: &str, user: &str, payload: Option<&str>| {
            let mut items = vec![
                text(id),
                text("task_id"),
                text("t"),
                text("user_id"),
                text(user),
                text("slot"),
                text("5"),
                text("completed_at"),
                text("6"),
            ];
            if let Some(p) = payload {
                items.extend([text("payload"), text(p)]);
            }
            items
        };
        let mut reply: Vec<Reply> = [
            entry("1-0", "a", None),
            entry("1-1", "payload", Some(r#""slot""#)),
            entry("1-2", "1-3", Some("[1]")),
            entry("1-3", "c", None),
        ]
        .concat();
        reply.extend(entry("1-4", "d", None));
        reply.extend([text("kind"), text("email"), text("cost"), text("2"), text("policy"), text("5/60000")]);
        reply.extend(entry("1-5", "e", None));
        reply.extend([text("started_at"), text("4"), text("attempt"), text("2"), text("status"), text("503")]);
        reply.extend([text("duration_ms"), text("9"), text("outcome"), text("retry")]);
        reply.extend(entry("1-6", "f", None));
        reply.extend([text("started_at"), text("5"), text("attempt"), text("1"), text("result"), text("failed")]);
        reply.extend([text("detail"), text(r#"{"why": "x"}"#), text("outcome"), text("failed")]);
        let Ok(page) = log_page(&reply) else { panic!("parse failed") };
        let attempt = Logged {
            attempt: 2,
            ended: Attempt { started_at: 4, status: Some(503), error: None, result: None, duration_ms: Some(9) },
            outcome: Some("retry".into()),
        };
        assert_eq!(page[5].1.delivery, Some(attempt));
        let pulled = page[6].1.delivery.as_ref().map(|d| (d.ended.result.as_deref(), d.outcome.as_deref()));
        assert_eq!(pulled, Some((Some("failed"), Some("failed"))));
        assert_eq!(page[6].1.detail.as_ref().map(|d| d.get()), Some(r#"{"why": "x"}"#));
        assert!(page[4].1.delivery.is_none());
        let last = &page[4].1;
        assert_eq!((last.kind.as_str(), last.cost, last.policy.as_deref()), ("email", 2, Some("5/60000")));
        assert_eq!((page[0].1.kind.as_str(), page[0].1.cost, page[0].1.policy.as_deref()), ("default", 1, None));
        let page = &page[..4];
        let seen: Vec<_> =
            page.iter().map(|(id, c)| (id.as_str(), c.user_id.as_str(), c.payload.as_ref().map(|p| p.get()))).collect();
        assert_eq!(
            seen,
            [
                ("1-0", "a", None),
                ("1-1", "payload", Some(r#""slot""#)),
                ("1-2", "1-3", Some("[1]")),
                ("1-3", "c", None)
            ]
        );
        // A field name without its value, and an entry without a slot, are refused.
        assert!(log_page(&reply[..reply.len() - 1]).is_err());
        assert!(log_page(&[text("1-0"), text("task_id"), text("t")]).is_err());
    }
}
