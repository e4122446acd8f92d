//! `poke.lua`: runs a lane's due head tasks now, and says where one task stands.

use crate::keys::LaneKey;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{POKE, Script};
use crate::scripts::shared::{Admitted, completions, placement};

/// Runs the lane's due head tasks now; `task_id`'s placement afterwards.
pub struct Poke<'a> {
    pub lane: &'a LaneKey,
    pub task_id: &'a str,
}

impl Call for Poke<'_> {
    type Output = Admitted;

    fn script(&self) -> &'static Script {
        &POKE
    }

    fn args(&self) -> Vec<String> {
        vec![self.lane.0.clone(), self.task_id.to_string()]
    }

    /// `[status, completed_at | position, now, completions…]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Admitted, Unexpected> {
        // Its wake-up is the admission's second: the first one's outcome is the one reported.
        Ok(Admitted {
            placement: placement(reply)?,
            now: reply.int()?,
            ran: completions(reply)?,
            wake_unheard: false,
            started: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Placement;
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::super::reply::tests::text;
    use super::super::shared::tests::completion;
    use super::*;

    #[test]
    fn a_poke_answers_one_placement() {
        let lane = LaneKey("alice".into());
        let call = Poke { lane: &lane, task_id: "t" };
        assert_eq!(call.args(), ["alice", "t"]);
        let reply = [text("queued"), Int(4), Int(2_000)];
        let Ok(admitted) = read_reply(&call, &reply) else { panic!("parse failed") };
        assert!(matches!(admitted.placement, Placement::Queued { position: 4 }) && admitted.ran.is_empty());
        assert_eq!(admitted.now, 2_000);
        assert!(read_reply(&call, &[text("queued"), text("x"), Int(2)]).is_err());
        // An item less, or one that is not a whole completion.
        assert!(read_reply(&call, &reply[..2]).is_err());
        assert!(read_reply(&call, &[&reply[..], &[text("t1")]].concat()).is_err());
        let ran = [&reply[..], &completion("t1", "alice", 1_000, 1_005)].concat();
        assert!(matches!(read_reply(&call, &ran), Ok(Admitted { ran, .. }) if ran.len() == 1));
    }
}
