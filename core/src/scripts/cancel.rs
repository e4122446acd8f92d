//! `cancel.lua`: withdraws a queued task.

use crate::keys::LaneKey;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{CANCEL, Script};

/// Cancels a queued task of `lane`.
pub struct Cancel<'a> {
    pub lane: &'a LaneKey,
    pub task_id: &'a str,
}

/// What `DELETE /api/v1/task/{id}` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// Cancelled now, or by an earlier request, at this instant.
    Cancelled {
        at: i64,
    },
    /// It had already run.
    Completed {
        at: i64,
    },
    /// Its last delivery attempt failed it.
    Failed {
        at: i64,
    },
    /// A delivery attempt started `since` is in flight: it can no longer be withdrawn.
    Running {
        since: i64,
    },
    Unknown,
}

impl Call for Cancel<'_> {
    type Output = Cancelled;

    fn script(&self) -> &'static Script {
        &CANCEL
    }

    fn args(&self) -> Vec<String> {
        vec![self.lane.0.clone(), self.task_id.to_string()]
    }

    /// `[state, at]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Cancelled, Unexpected> {
        let (state, at) = (reply.text()?, reply.int()?);
        match state.as_str() {
            "cancelled" => Ok(Cancelled::Cancelled { at }),
            "completed" => Ok(Cancelled::Completed { at }),
            "failed" => Ok(Cancelled::Failed { at }),
            "running" => Ok(Cancelled::Running { since: at }),
            "unknown" => Ok(Cancelled::Unknown),
            other => Err(reply.fail(format_args!("cancel answered {other:?} for task {}", self.task_id))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::super::reply::tests::text;
    use super::*;

    #[test]
    fn every_state() {
        let lane = LaneKey("alice".into());
        let call = Cancel { lane: &lane, task_id: "t" };
        assert_eq!(call.args(), ["alice", "t"]);
        assert_eq!(read_reply(&call, &[text("cancelled"), Int(5)]), Ok(Cancelled::Cancelled { at: 5 }));
        assert_eq!(read_reply(&call, &[text("completed"), Int(6)]), Ok(Cancelled::Completed { at: 6 }));
        assert_eq!(read_reply(&call, &[text("unknown"), Int(0)]), Ok(Cancelled::Unknown));
        assert_eq!(read_reply(&call, &[text("failed"), Int(7)]), Ok(Cancelled::Failed { at: 7 }));
        assert_eq!(read_reply(&call, &[text("running"), Int(8)]), Ok(Cancelled::Running { since: 8 }));
        // A record without a queue entry is a bug.
        assert!(read_reply(&call, &[text("unqueued"), Int(0)]).is_err());
        assert!(read_reply(&call, &[text("unknown")]).is_err());
        assert!(read_reply(&call, &[text("unknown"), Int(0), Int(0)]).is_err());
    }
}
