//! What the API shows: task records (`read_task.lua`), one user's state (`user_state.lua`),
//! log pages (`XRANGE`), the page's overview (`overview.lua`) and the metrics
//! (`metrics.lua`, `count_status.lua`).

use super::*;

/// A bounded snapshot of the queue and the log for the page (`GET /api/v1/overview`).
pub struct Overview {
    pub now: i64,
    pub queued_tasks: i64,
    pub waiting_users: i64,
    /// The watched user's tier (`None`: the built-in one, or no user watched).
    pub tier: Option<String>,
    /// The lanes whose next task may start soonest: (user id, kind, tasks queued, when).
    pub next_due: Vec<(String, String, i64, i64)>,
    /// The newest completions, newest first.
    pub recent: Vec<Completion>,
    /// Per lane asked about: its queued tasks in run order, and its last completions.
    pub lanes: Vec<LaneView>,
}

/// One watched lane in the overview.
pub struct LaneView {
    pub queued: Vec<QueuedTask>,
    pub completed: Vec<Spent>,
}

pub struct QueuedTask {
    pub task_id: String,
    pub slot: i64,
    pub cost: u32,
    pub payload: Option<Box<RawValue>>,
}

/// A task record for `GET /api/v1/task/{id}`.
pub struct TaskRecord {
    pub user_id: String,
    pub slot: i64,
    pub completed_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub payload: Option<Box<RawValue>>,
    pub kind: String,
    pub cost: u32,
}

/// One user's state (`user_state.lua`).
pub struct UserState {
    pub now: i64,
    pub tier: Option<String>,
    /// One per lane asked about, in that order.
    pub lanes: Vec<LaneState>,
}

pub struct LaneState {
    pub queued: i64,
    /// The task that runs next: (task id, slot).
    pub next_task: Option<(String, i64)>,
    /// The ledger as stored in Redis (when asked for and present).
    pub ledger: Option<Vec<u8>>,
    /// The lane's last completion times and costs, oldest first.
    pub recent_completions: Vec<Spent>,
}

impl Queue<'_> {
    /// A task's record (`read_task.lua`).
    pub async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        parse_task(&self.eval(&scripts::READ_TASK, &[task_id, "0"]).await?)
    }

    /// The task's record for an answer to `GET /api/v1/task/{id}` (`read_task.lua`), which
    /// counts that answer (200, or 404 for `None`).
    pub async fn read_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        parse_task(&self.eval(&scripts::READ_TASK, &[task_id, "1"]).await?)
    }

    /// One user's state: their tier (at `tier_key`) and each lane given as (lane, ledger key
    /// if the ledger is in Redis; `None` when it lives in the key-value store).
    pub async fn user_state(
        &self,
        tier_key: &str,
        lanes: &[(LaneKey, Option<String>)],
    ) -> Result<UserState, StoreError> {
        let mut args = vec![tier_key];
        for (lane, ledger_key) in lanes {
            args.extend([lane.0.as_str(), ledger_key.as_deref().unwrap_or("")]);
        }
        parse_user_state(&self.eval(&scripts::USER_STATE, &args).await?, lanes.len())
    }

    /// Up to `limit` log entries after the stream id `after` (exclusive), oldest first,
    /// each with its stream id (the paging cursor).
    pub async fn log_page(&self, after: Option<&str>, limit: u32) -> Result<Vec<(String, Completion)>, StoreError> {
        let start = after.map(|c| format!("({c}")).unwrap_or_else(|| "-".to_string());
        let count = limit.to_string();
        let reply = self.execute("XRANGE", &[self.config.keys.log(), &start, "+", "COUNT", &count]).await?;
        parse_log_page(&reply)
    }

    /// Every counter of the metrics hash, and the number of users with queued tasks.
    pub async fn metrics(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let reply = self.eval(&scripts::METRICS, &[]).await?;
        reply.chunks(2).map(|pair| Ok((text_at(pair, 0)?, int_at(pair, 1)?))).collect()
    }

    /// Counts an HTTP answer that no script counted.
    pub async fn count_status(&self, status: u16) -> Result<(), StoreError> {
        self.eval(&scripts::COUNT_STATUS, &[&status.to_string()]).await.map(|_| ())
    }

    /// The snapshot for the page, with the watched user's tier (at `tier_key`; `""` when no
    /// user is watched) and `lanes`.
    pub async fn overview(
        &self,
        tier_key: &str,
        lanes: &[LaneKey],
        soonest: usize,
        recent: usize,
        queued: usize,
    ) -> Result<Overview, StoreError> {
        let (soonest, recent, queued) = (soonest.to_string(), recent.to_string(), queued.to_string());
        let mut args = vec![soonest.as_str(), &recent, &queued, tier_key];
        args.extend(lanes.iter().map(|lane| lane.0.as_str()));
        parse_overview(&self.eval(&scripts::OVERVIEW, &args).await?, lanes.len())
    }
}

/// `read_task.lua`: `HMGET t:<id> u s c x p k w`.
fn parse_task(reply: &[RedisResult]) -> Result<Option<TaskRecord>, StoreError> {
    let field = |i: usize| reply.get(i).and_then(bytes);
    let (Some(user), Some(slot)) = (field(0), field(1)) else {
        return Ok(None);
    };
    Ok(Some(TaskRecord {
        user_id: String::from_utf8_lossy(user).into_owned(),
        slot: parse_int(slot)?,
        completed_at: field(2).map(parse_int).transpose()?,
        cancelled_at: field(3).map(parse_int).transpose()?,
        payload: payload(field(4))?,
        kind: kind(field(5)),
        cost: cost(field(6))?,
    }))
}

/// The fields a log entry can have (`run_due` in `lib.lua`).
const LOG_FIELDS: [&str; 8] = ["task_id", "user_id", "slot", "completed_at", "payload", "kind", "cost", "policy"];

/// `XRANGE`, flattened by the host: each entry is its id, then its field/value pairs (four
/// before kinds existed, seven since, one more with a payload). Entries are told apart by reading pairs while the next item is a
/// field name: a value is always consumed as a value, and an entry id (`<ms>-<seq>`) is
/// never a field name.
fn parse_log_page(reply: &[RedisResult]) -> Result<Vec<(String, Completion)>, StoreError> {
    let mut page = Vec::new();
    let mut at = 0;
    while at < reply.len() {
        let id = text_at(reply, at)?;
        at += 1;
        let mut fields = std::collections::HashMap::new();
        while let Some(name) = reply.get(at).and_then(bytes).and_then(|b| LOG_FIELDS.iter().find(|f| f.as_bytes() == b))
        {
            let value = reply
                .get(at + 1)
                .and_then(bytes)
                .ok_or_else(|| StoreError::Unexpected(format!("log entry {id}: {name} has no value")))?;
            fields.insert(*name, value);
            at += 2;
        }
        let text = |name: &str| String::from_utf8_lossy(fields.get(name).copied().unwrap_or_default()).into_owned();
        let completion = Completion {
            task_id: text("task_id"),
            user_id: text("user_id"),
            slot: parse_int(fields.get("slot").copied().unwrap_or_default())?,
            completed_at: parse_int(fields.get("completed_at").copied().unwrap_or_default())?,
            kind: kind(fields.get("kind").copied()),
            cost: cost(fields.get("cost").copied())?,
            policy: fields.get("policy").map(|p| String::from_utf8_lossy(p).into_owned()),
            payload: payload(fields.get("payload").copied())?,
        };
        page.push((id, completion));
    }
    Ok(page)
}

/// `user_state.lua` (its layout is described there), for `lanes` lanes.
fn parse_user_state(reply: &[RedisResult], lanes: usize) -> Result<UserState, StoreError> {
    let mut at = 2;
    let mut states = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let head = text_at(reply, at + 1)?;
        let next_task = if head.is_empty() { None } else { Some((head, int_at(reply, at + 2)?)) };
        let ledger = ledger_at(reply, at + 3)?;
        let queued = int_at(reply, at)?;
        at += 5;
        let recent_completions = groups(reply, &mut at, 1)?.iter().map(spent).collect::<Result<_, _>>()?;
        states.push(LaneState { queued, next_task, ledger, recent_completions });
    }
    if at != reply.len() {
        return Err(StoreError::Unexpected(format!("user state: {} items left over", reply.len().saturating_sub(at))));
    }
    Ok(UserState { now: int_at(reply, 0)?, tier: tier_at(reply, 1)?, lanes: states })
}

/// `overview.lua` (its layout is described there), with `lanes` watched lanes.
fn parse_overview(reply: &[RedisResult], lanes: usize) -> Result<Overview, StoreError> {
    let mut at = 4;
    let next_due = groups(reply, &mut at, 4)?
        .chunks(4)
        .map(|g| Ok((text_at(g, 0)?, text_at(g, 1)?, int_at(g, 2)?, int_at(g, 3)?)))
        .collect::<Result<_, StoreError>>()?;
    let recent = groups(reply, &mut at, 7)?
        .chunks(7)
        .map(|g| {
            let mut completion = completion(g)?;
            completion.payload = payload(g.get(4).and_then(bytes))?;
            completion.kind = text_at(g, 5)?;
            completion.cost = cost(g.get(6).and_then(bytes))?;
            Ok(completion)
        })
        .collect::<Result<_, StoreError>>()?;
    let mut views = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let queued = groups(reply, &mut at, 4)?
            .chunks(4)
            .map(|g| {
                let (task_id, slot, payload, cost) = (
                    text_at(g, 0)?,
                    int_at(g, 1)?,
                    payload(g.get(2).and_then(bytes))?,
                    cost(g.get(3).and_then(bytes))?,
                );
                Ok(QueuedTask { task_id, slot, cost, payload })
            })
            .collect::<Result<_, StoreError>>()?;
        let completed = groups(reply, &mut at, 1)?.iter().map(spent).collect::<Result<_, _>>()?;
        views.push(LaneView { queued, completed });
    }
    if at != reply.len() {
        return Err(StoreError::Unexpected(format!("overview: {} items left over", reply.len().saturating_sub(at))));
    }
    Ok(Overview {
        now: int_at(reply, 0)?,
        queued_tasks: int_at(reply, 1)?,
        waiting_users: int_at(reply, 2)?,
        tier: tier_at(reply, 3)?,
        next_due,
        recent,
        lanes: views,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::{completion, text};
    use RedisResult::{Int64, Nil};

    #[test]
    fn task_records_and_log_pages() {
        assert!(matches!(parse_task(&[Nil, Nil, Nil, Nil, Nil]), Ok(None)));
        let Ok(Some(task)) = parse_task(&[text("alice"), text("1000"), Nil, Nil, Nil]) else { panic!("no task") };
        assert_eq!(
            (task.user_id.as_str(), task.slot, task.completed_at, task.cancelled_at),
            ("alice", 1_000, None, None)
        );
        assert!(task.payload.is_none());
        assert_eq!((task.kind.as_str(), task.cost), ("default", 1));
        let Ok(Some(task)) = parse_task(&[text("alice"), text("1000"), Nil, Nil, Nil, text("email"), text("3")]) else {
            panic!("no task")
        };
        assert_eq!((task.kind.as_str(), task.cost), ("email", 3));
        let Ok(Some(task)) = parse_task(&[text("alice"), text("1000"), text("1004"), Nil, text(r#"{"b":1,"a":2}"#)])
        else {
            panic!("no task")
        };
        assert_eq!(task.completed_at, Some(1_004));
        assert_eq!(task.payload.as_ref().map(|p| p.get()), Some(r#"{"b":1,"a":2}"#));
        let Ok(Some(task)) = parse_task(&[text("alice"), text("1000"), Nil, text("900"), Nil]) else {
            panic!("no task")
        };
        assert_eq!(task.cancelled_at, Some(900));
        assert!(parse_task(&[text("alice"), text("1000"), Nil, Nil, text("{not json")]).is_err());

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
        let reply: Vec<RedisResult> = [
            entry("1-0", "a", None),
            entry("1-1", "payload", Some(r#""slot""#)),
            entry("1-2", "1-3", Some("[1]")),
            entry("1-3", "c", None),
        ]
        .concat();
        let mut reply = reply;
        reply.extend(entry("1-4", "d", None));
        reply.extend([text("kind"), text("email"), text("cost"), text("2"), text("policy"), text("5/60000")]);
        let Ok(page) = parse_log_page(&reply) else { panic!("parse failed") };
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
    }

    #[test]
    fn user_state_with_and_without_a_backlog() {
        let mut reply = vec![Int64(5_000), text("pro")];
        reply.extend([
            Int64(2),
            text("0123456789abcdef01234567"),
            Int64(6_000),
            Int64(1),
            text("v1 3 5000:a"),
            Int64(2),
            text("4000"),
            text("5000*3"),
        ]);
        reply.extend([Int64(0), text(""), Int64(0), Int64(0), text(""), Int64(0)]);
        let Ok(state) = parse_user_state(&reply, 2) else { panic!("parse failed") };
        assert_eq!((state.now, state.tier.as_deref(), state.lanes.len()), (5_000, Some("pro"), 2));
        let lane = &state.lanes[0];
        assert_eq!(lane.queued, 2);
        assert_eq!(lane.next_task, Some(("0123456789abcdef01234567".to_string(), 6_000)));
        assert_eq!(lane.ledger.as_deref(), Some(&b"v1 3 5000:a"[..]));
        assert_eq!(lane.recent_completions, vec![(4_000, 1), (5_000, 3)]);
        let idle = &state.lanes[1];
        assert!(idle.next_task.is_none() && idle.ledger.is_none() && idle.recent_completions.is_empty());
        // A reply for another number of lanes than asked is a bug.
        assert!(parse_user_state(&reply, 1).is_err());
        assert!(parse_user_state(&reply, 3).is_err());
    }

    #[test]
    fn overview_groups() {
        let mut reply = vec![Int64(100), Int64(5), Int64(2), text("pro")];
        reply.extend([Int64(1), text("alice"), text("email"), Int64(3), text("150")]);
        reply.push(Int64(1));
        reply.extend(completion("t9", "bob", 90, 95));
        reply.extend([text(r#"{"job":7}"#), text("email"), text("2")]);
        reply.extend([
            Int64(2),
            text("q1"),
            text("150"),
            text(""),
            text("1"),
            text("q2"),
            text("1150"),
            text("true"),
            text("4"),
        ]);
        reply.extend([Int64(2), text("98"), text("99*4")]);
        let Ok(overview) = parse_overview(&reply, 1) else { panic!("parse failed") };
        assert_eq!((overview.now, overview.queued_tasks, overview.waiting_users), (100, 5, 2));
        assert_eq!(overview.tier.as_deref(), Some("pro"));
        assert_eq!(overview.next_due, vec![("alice".to_string(), "email".to_string(), 3, 150)]);
        assert_eq!(overview.recent.len(), 1);
        assert_eq!(overview.recent[0].payload.as_ref().map(|p| p.get()), Some(r#"{"job":7}"#));
        assert_eq!((overview.recent[0].kind.as_str(), overview.recent[0].cost), ("email", 2));
        let lane = &overview.lanes[0];
        let queued: Vec<_> = lane
            .queued
            .iter()
            .map(|q| (q.task_id.as_str(), q.slot, q.cost, q.payload.as_ref().map(|p| p.get())))
            .collect();
        assert_eq!(queued, [("q1", 150, 1, None), ("q2", 1_150, 4, Some("true"))]);
        assert_eq!(lane.completed, vec![(98, 1), (99, 4)]);
        assert!(parse_overview(&reply, 2).is_err());
        // One lane fewer than the reply holds is a bug too.
        assert!(parse_overview(&reply, 0).is_err());
        assert!(parse_overview(&[Int64(1), Int64(2), Int64(3), text(""), Int64(5)], 0).is_err());
        // No user watched: no tier, no lanes.
        let Ok(idle) = parse_overview(&[Int64(1), Int64(2), Int64(3), text(""), Int64(0), Int64(0)], 0) else {
            panic!("parse failed")
        };
        assert!(idle.tier.is_none() && idle.lanes.is_empty() && idle.next_due.is_empty() && idle.recent.is_empty());
    }
}
