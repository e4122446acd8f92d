//! `read_task.lua`: a task's record.

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{READ_TASK, Script};
use crate::scripts::shared::{cost, kind, payload};
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
}

impl Call for ReadTask<'_> {
    type Output = Option<TaskRecord>;

    fn script(&self) -> &'static Script {
        &READ_TASK
    }

    fn args(&self) -> Vec<String> {
        vec![self.task_id.to_string(), if self.count { "1" } else { "0" }.to_string()]
    }

    /// `HMGET t:<id> u s c x p k w`: nil for each field the record lacks.
    fn parse(&self, reply: &mut Cursor) -> Result<Option<TaskRecord>, Unexpected> {
        let mut fields: [Option<&[u8]>; 7] = [None; 7];
        for field in &mut fields {
            *field = reply.optional()?;
        }
        let [user, slot, completed, cancelled, stored_payload, stored_kind, stored_cost] = fields;
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
        assert!(matches!(read_reply(&CALL, &[Nil, Nil, Nil, Nil, Nil, Nil, Nil]), Ok(None)));
        let Ok(Some(task)) = read_reply(&CALL, &[text("alice"), text("1000"), Nil, Nil, Nil, Nil, Nil]) else {
            panic!("no task")
        };
        assert_eq!(
            (task.user_id.as_str(), task.slot, task.completed_at, task.cancelled_at),
            ("alice", 1_000, None, None)
        );
        assert!(task.payload.is_none());
        assert_eq!((task.kind.as_str(), task.cost), ("default", 1));
        let reply = [text("alice"), text("1000"), Nil, Nil, Nil, text("email"), text("3")];
        let Ok(Some(task)) = read_reply(&CALL, &reply) else { panic!("no task") };
        assert_eq!((task.kind.as_str(), task.cost), ("email", 3));
        let Ok(Some(task)) =
            read_reply(&CALL, &[text("alice"), text("1000"), text("1004"), Nil, text(r#"{"b":1,"a":2}"#), Nil, Nil])
        else {
            panic!("no task")
        };
        assert_eq!(task.completed_at, Some(1_004));
        assert_eq!(task.payload.as_ref().map(|p| p.get()), Some(r#"{"b":1,"a":2}"#));
        let Ok(Some(task)) = read_reply(&CALL, &[text("alice"), text("1000"), Nil, text("900"), Nil, Nil, Nil]) else {
            panic!("no task")
        };
        assert_eq!(task.cancelled_at, Some(900));
        assert!(read_reply(&CALL, &[text("alice"), text("1000"), Nil, Nil, text("{not json"), Nil, Nil]).is_err());
        // A field more or less than were asked for.
        assert!(read_reply(&CALL, &[&reply[..], &[Nil]].concat()).is_err());
        assert!(read_reply(&CALL, &reply[..6]).is_err());
    }
}
