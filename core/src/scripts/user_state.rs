//! `user_state.lua`: one user's state for `GET /api/v1/users/{id}`.

use crate::keys::LaneKey;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{Script, USER_STATE};
use crate::scripts::shared::{history, ledger, tier};
use crate::slot::Spent;

/// The user's tier (at `tier_key`) and each lane given as (lane, ledger key if the ledger is
/// in Redis; `None` when it lives in the key-value store).
pub struct ReadUserState<'a> {
    pub tier_key: &'a str,
    pub lanes: &'a [(LaneKey, Option<String>)],
}

/// One user's state.
#[derive(Debug)]
pub struct UserState {
    pub now: i64,
    pub tier: Option<String>,
    /// One per lane asked about, in that order.
    pub lanes: Vec<LaneState>,
}

#[derive(Debug)]
pub struct LaneState {
    pub queued: i64,
    /// The task that runs next: (task id, slot).
    pub next_task: Option<(String, i64)>,
    /// The ledger as stored in Redis (when asked for and present).
    pub ledger: Option<Vec<u8>>,
    /// The lane's last completion times and costs, oldest first.
    pub recent_completions: Vec<Spent>,
}

impl Call for ReadUserState<'_> {
    type Output = UserState;

    fn script(&self) -> &'static Script {
        &USER_STATE
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![self.tier_key.to_string()];
        for (lane, ledger_key) in self.lanes {
            args.extend([lane.0.clone(), ledger_key.clone().unwrap_or_default()]);
        }
        args
    }

    /// `[now, tier, then per lane: queued, head task id ('' for none), head slot, ledger
    /// present (0/1), ledger, n, completions×n]`.
    fn parse(&self, reply: &mut Cursor) -> Result<UserState, Unexpected> {
        let (now, tier) = (reply.int()?, tier(reply)?);
        let mut lanes = Vec::with_capacity(self.lanes.len());
        for _ in self.lanes {
            let queued = reply.int()?;
            let (head, slot) = (reply.text()?, reply.int()?);
            let next_task = (!head.is_empty()).then_some((head, slot));
            let ledger = ledger(reply)?;
            lanes.push(LaneState { queued, next_task, ledger, recent_completions: history(reply)? });
        }
        Ok(UserState { now, tier, lanes })
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::super::reply::tests::text;
    use super::*;

    #[test]
    fn user_state_with_and_without_a_backlog() {
        let mut reply = vec![Int(5_000), text("pro")];
        reply.extend([
            Int(2),
            text("0123456789abcdef01234567"),
            Int(6_000),
            Int(1),
            text("v1 3 5000:a"),
            Int(2),
            text("4000"),
            text("5000*3"),
        ]);
        reply.extend([Int(0), text(""), Int(0), Int(0), text(""), Int(0)]);
        let lane = |l: &str| (LaneKey(l.into()), None);
        let two = [lane("alice"), (LaneKey("alice:email".into()), Some("taskq:ledger:alice:email".into()))];
        let call = |lanes| ReadUserState { tier_key: "taskq:tier:alice", lanes };
        assert_eq!(call(&two).args(), ["taskq:tier:alice", "alice", "", "alice:email", "taskq:ledger:alice:email"]);
        let Ok(state) = read_reply(&call(&two), &reply) else { panic!("parse failed") };
        assert_eq!((state.now, state.tier.as_deref(), state.lanes.len()), (5_000, Some("pro"), 2));
        let first = &state.lanes[0];
        assert_eq!(first.queued, 2);
        assert_eq!(first.next_task, Some(("0123456789abcdef01234567".to_string(), 6_000)));
        assert_eq!(first.ledger.as_deref(), Some(&b"v1 3 5000:a"[..]));
        assert_eq!(first.recent_completions, vec![(4_000, 1), (5_000, 3)]);
        let idle = &state.lanes[1];
        assert!(idle.next_task.is_none() && idle.ledger.is_none() && idle.recent_completions.is_empty());
        // A reply for another number of lanes than asked is a bug.
        assert!(read_reply(&call(&two[..1]), &reply).is_err());
        let three = [lane("a"), lane("b"), lane("c")];
        assert!(read_reply(&call(&three), &reply).is_err());
        // An item less.
        assert!(read_reply(&call(&two), &reply[..reply.len() - 1]).is_err());
    }
}
