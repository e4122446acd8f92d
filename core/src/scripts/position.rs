//! `position.lua`: a task's place in its lane's queue.

use crate::keys::LaneKey;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{POSITION, Script};

/// The task's 1-based place in its lane's queue, 0 if it is not queued.
pub struct Position<'a> {
    pub lane: &'a LaneKey,
    pub task_id: &'a str,
}

impl Call for Position<'_> {
    type Output = i64;

    fn script(&self) -> &'static Script {
        &POSITION
    }

    fn args(&self) -> Vec<String> {
        vec![self.lane.0.clone(), self.task_id.to_string()]
    }

    /// `position`.
    fn parse(&self, reply: &mut Cursor) -> Result<i64, Unexpected> {
        reply.int()
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::*;

    #[test]
    fn one_position() {
        let lane = LaneKey("alice".into());
        let call = Position { lane: &lane, task_id: "t" };
        assert_eq!(call.args(), ["alice", "t"]);
        assert_eq!(read_reply(&call, &[Int(3)]), Ok(3));
        assert!(read_reply(&call, &[]).is_err());
        assert!(read_reply(&call, &[Int(3), Int(0)]).is_err());
    }
}
