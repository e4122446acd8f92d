//! `read_task.lua`: a task's record.

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{READ_TASK, Script};
use crate::scripts::shared::{Attempt, cost, kind, payload};
use serde_json::value::RawValue;

/// A task's record; `count` makes the script count the answer it makes (200, or 404 for
/// none), for `GET /api/v1/task/{id}`.
pub struct ReadTask<'a> {
    pub task_id: &'a str,
    pub count: bool,
}

/// A task record for `GET /api/v1/task/{id}`.
#[derive(Debug)]
pub struct TaskRecord {
    pub user_id: String,
    pub slot: i64,
    pub completed_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub payload: Option<Box<RawValue>>,
    pub kind: String,
    pub cost: u32,
    /// A delivery attempt's start, while it is in flight.
    pub running_since: Option<i64>,
    /// When its last delivery attempt failed it.
    pub failed_at: Option<i64>,
    /// Its delivery attempts that ended, oldest first.
    pub attempts: Vec<Attempt>,
    /// A pulled task's last outcome's `detail`, as its worker sent it.
    pub detail: Option<Box<RawValue>>,
}

/// Where a task is in its life. A task is queued until it runs (completed at once) or, when
/// its kind has a target, until an attempt is claimed (running); an attempt that fails and
/// may be retried makes it queued again. Only a queued task can be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl TaskRecord {
    pub fn status(&self) -> Status {
        if self.completed_at.is_some() {
            Status::Completed
        } else if self.failed_at.is_some() {
            Status::Failed
        } else if self.cancelled_at.is_some() {
            Status::Cancelled
        } else if self.running_since.is_some() {
            Status::Running
        } else {
            Status::Queued
        }
    }
}

/// The record's `h` field: attempts separated by `;`.
fn attempts(stored: Option<&[u8]>) -> Option<Vec<Attempt>> {
    let Some(stored) = stored else { return Some(Vec::new()) };
    let text = std::str::from_utf8(stored).ok()?;
    text.split(';')
        .map(|attempt| {
            let mut parts = attempt.split(',');
            let (started, outcome, duration) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            // An HTTP status, a worker's result (`w:<result>`), or the error's name.
            let (status, result, error) = match (outcome.parse::<u16>(), outcome.strip_prefix("w:")) {
                (Ok(code), _) => (Some(code), None, None),
                (_, Some(result)) => (None, Some(result.to_string()), None),
                _ => (None, None, Some(outcome.to_string())),
            };
            let duration_ms = if duration.is_empty() { None } else { Some(duration.parse().ok()?) };
            Some(Attempt { started_at: started.parse().ok()?, status, error, result, duration_ms })
        })
        .collect()
}

impl Call for ReadTask<'_> {
    type Output = Option<TaskRecord>;

    fn script(&self) -> &'static Script {
        &READ_TASK
    }

    fn args(&self) -> Vec<String> {
        vec![self.task_id.to_string(), if self.count { "1" } else { "0" }.to_string()]
    }

    /// `HMGET t:<id> u s c x p k w r f h y`: nil for each field the record lacks.
    fn parse(&self, reply: &mut Cursor) -> Result<Option<TaskRecord>, Unexpected> {
        let mut fields: [Option<&[u8]>; 11] = [None; 11];
        for field in &mut fields {
            *field = reply.optional()?;
        }
        let [
            user,
            slot,
            completed,
            cancelled,
            stored_payload,
            stored_kind,
            stored_cost,
            running,
            failed,
            tried,
            detail,
        ] = fields;
        let (Some(user), Some(slot)) = (user, slot) else {
            return Ok(None);
        };
        let int =
            |b: &[u8]| crate::scripts::reply::parse_int(b).ok_or_else(|| reply.fail("a stored time is not an integer"));
        Ok(Some(TaskRecord {
            user_id: String::from_utf8_lossy(user).into_owned(),
            slot: int(slot)?,
            completed_at: completed.map(int).transpose()?,
            cancelled_at: cancelled.map(int).transpose()?,
            payload: payload(reply, stored_payload)?,
            kind: kind(stored_kind),
            cost: cost(reply, stored_cost)?,
            running_since: running.map(int).transpose()?,
            failed_at: failed.map(int).transpose()?,
            attempts: attempts(tried).ok_or_else(|| reply.fail("a task's attempts as stored"))?,
            detail: payload(reply, detail)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Nil;
    use super::super::reply::tests::text;
    use super::*;

    const CALL: ReadTask = ReadTask { task_id: "t", count: false };

    #[test]
    fn task_records() {
        assert_eq!(ReadTask { task_id: "t", count: true }.args(), ["t", "1"]);
        assert!(matches!(read_reply(&CALL, &[Nil, Nil, Nil, Nil, Nil, Nil, Nil, Nil, Nil, Nil, Nil]), Ok(None)));
        let Ok(Some(task)) =
            read_reply(&CALL, &[text("alice"), text("1000"), Nil, Nil, Nil, Nil, Nil, Nil, Nil, Nil, Nil])
        else {
            panic!("no task")
        };
        assert_eq!(
            (task.user_id.as_str(), task.slot, task.completed_at, task.cancelled_at),
            ("alice", 1_000, None, None)
        );
        assert!(task.payload.is_none());
        assert_eq!((task.kind.as_str(), task.cost), ("default", 1));
        let reply = [text("alice"), text("1000"), Nil, Nil, Nil, text("email"), text("3"), Nil, Nil, Nil, Nil];
        let Ok(Some(task)) = read_reply(&CALL, &reply) else { panic!("no task") };
        assert_eq!((task.kind.as_str(), task.cost), ("email", 3));
        let Ok(Some(task)) = read_reply(
            &CALL,
            &[text("alice"), text("1000"), text("1004"), Nil, text(r#"{"b":1,"a":2}"#), Nil, Nil, Nil, Nil, Nil, Nil],
        ) else {
            panic!("no task")
        };
        assert_eq!(task.completed_at, Some(1_004));
        assert_eq!(task.payload.as_ref().map(|p| p.get()), Some(r#"{"b":1,"a":2}"#));
        let Ok(Some(task)) =
            read_reply(&CALL, &[text("alice"), text("1000"), Nil, text("900"), Nil, Nil, Nil, Nil, Nil, Nil, Nil])
        else {
            panic!("no task")
        };
        assert_eq!(task.cancelled_at, Some(900));
        assert!(
            read_reply(
                &CALL,
                &[text("alice"), text("1000"), Nil, Nil, text("{not json"), Nil, Nil, Nil, Nil, Nil, Nil]
            )
            .is_err()
        );
        // A field more or less than were asked for.
        assert!(read_reply(&CALL, &[&reply[..], &[Nil]].concat()).is_err());
        assert!(read_reply(&CALL, &reply[..10]).is_err());
    }

    #[test]
    fn delivered_task_records() {
        let record = |running, failed, tried| {
            [text("ann"), text("1000"), Nil, Nil, Nil, text("mail"), Nil, running, failed, tried, Nil]
        };
        let Ok(Some(task)) = read_reply(&CALL, &record(text("1001"), Nil, Nil)) else { panic!("no task") };
        assert_eq!((task.status(), task.running_since, task.attempts.len()), (Status::Running, Some(1_001), 0));
        let tried = text("1001,503,12;3050,timeout,;5000,w:retry,40;7000,404,3");
        let Ok(Some(task)) = read_reply(&CALL, &record(Nil, text("7003"), tried)) else { panic!("no task") };
        assert_eq!(task.status(), Status::Failed);
        let expected = [
            Attempt { started_at: 1_001, status: Some(503), error: None, result: None, duration_ms: Some(12) },
            Attempt { started_at: 3_050, status: None, error: Some("timeout".into()), result: None, duration_ms: None },
            Attempt {
                started_at: 5_000,
                status: None,
                error: None,
                result: Some("retry".into()),
                duration_ms: Some(40),
            },
            Attempt { started_at: 7_000, status: Some(404), error: None, result: None, duration_ms: Some(3) },
        ];
        assert_eq!(task.attempts, expected);
        // A queued task waiting for its retry.
        let Ok(Some(task)) = read_reply(&CALL, &record(Nil, Nil, text("1001,503,12"))) else { panic!("no task") };
        assert_eq!(task.status(), Status::Queued);
        for bad in ["1001,503", "x,503,1", "1001,503,1,2", "1001,503,z"] {
            assert!(read_reply(&CALL, &record(Nil, Nil, text(bad))).is_err(), "{bad}");
        }
    }
}
