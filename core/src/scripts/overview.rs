//! `overview.lua`: a bounded snapshot of the queue and the log for the page.

use crate::keys::LaneKey;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{OVERVIEW, Script};
use crate::scripts::shared::{Completion, completion, cost_item, history, payload_item, tier};
use crate::slot::Spent;
use serde_json::value::RawValue;

/// The snapshot for the page, with the watched user's tier (at `tier_key`; `""` when no user
/// is watched) and `lanes`: the `soonest` lanes due first, the `recent` newest completions,
/// and up to `queued` tasks of each watched lane.
pub struct ReadOverview<'a> {
    pub tier_key: &'a str,
    pub lanes: &'a [LaneKey],
    pub soonest: usize,
    pub recent: usize,
    pub queued: usize,
}

/// A bounded snapshot of the queue and the log for the page (`GET /api/v1/overview`).
#[derive(Debug)]
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
    /// Open claims of pulled kinds, soonest to lapse first.
    pub claims: Vec<OpenClaim>,
    /// Per lane asked about: its queued tasks in run order, and its last completions.
    pub lanes: Vec<LaneView>,
}

/// One watched lane in the overview.
#[derive(Debug)]
pub struct LaneView {
    pub queued: Vec<QueuedTask>,
    pub completed: Vec<Spent>,
}

/// A pulled task's attempt in a worker's hands.
#[derive(Debug, serde::Serialize)]
pub struct OpenClaim {
    pub task_id: String,
    pub user_id: String,
    pub kind: String,
    pub attempt: i64,
    pub started_at: i64,
    pub deadline: i64,
}

#[derive(Debug)]
pub struct QueuedTask {
    pub task_id: String,
    pub slot: i64,
    pub cost: u32,
    pub payload: Option<Box<RawValue>>,
}

impl Call for ReadOverview<'_> {
    type Output = Overview;

    fn script(&self) -> &'static Script {
        &OVERVIEW
    }

    fn args(&self) -> Vec<String> {
        let mut args =
            vec![self.soonest.to_string(), self.recent.to_string(), self.queued.to_string(), self.tier_key.to_string()];
        args.extend(self.lanes.iter().map(|lane| lane.0.clone()));
        args
    }

    /// `now, queued, waiting, tier, n, (user, kind, queued, next)×n, m, (task, user, slot,
    /// completed, payload, kind, cost)×m, c, (task, user, kind, attempt, started,
    /// deadline)×c`, then per watched lane `k, (task, slot, payload, cost)×k, j,
    /// (completion)×j` (`overview.lua`).
    fn parse(&self, reply: &mut Cursor) -> Result<Overview, Unexpected> {
        let (now, queued_tasks, waiting_users, tier) = (reply.int()?, reply.int()?, reply.int()?, tier(reply)?);
        let n = reply.count()?;
        let next_due =
            (0..n).map(|_| Ok((reply.text()?, reply.text()?, reply.int()?, reply.int()?))).collect::<Result<_, _>>()?;
        let m = reply.count()?;
        let recent = (0..m)
            .map(|_| {
                let mut completion = completion(reply)?;
                completion.payload = payload_item(reply)?;
                completion.kind = reply.text()?;
                completion.cost = cost_item(reply)?;
                Ok(completion)
            })
            .collect::<Result<_, _>>()?;
        let c = reply.count()?;
        let claims = (0..c)
            .map(|_| {
                let (task_id, user_id, kind) = (reply.text()?, reply.text()?, reply.text()?);
                let (attempt, started_at, deadline) = (reply.int()?, reply.int()?, reply.int()?);
                Ok(OpenClaim { task_id, user_id, kind, attempt, started_at, deadline })
            })
            .collect::<Result<_, _>>()?;
        let mut lanes = Vec::with_capacity(self.lanes.len());
        for _ in self.lanes {
            let k = reply.count()?;
            let queued = (0..k)
                .map(|_| {
                    let (task_id, slot) = (reply.text()?, reply.int()?);
                    Ok(QueuedTask { task_id, slot, payload: payload_item(reply)?, cost: cost_item(reply)? })
                })
                .collect::<Result<_, _>>()?;
            lanes.push(LaneView { queued, completed: history(reply)? });
        }
        Ok(Overview { now, queued_tasks, waiting_users, tier, next_due, recent, claims, lanes })
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::super::reply::tests::text;
    use super::super::shared::tests::completion;
    use super::*;

    fn call(lanes: &[LaneKey]) -> ReadOverview<'_> {
        ReadOverview { tier_key: "", lanes, soonest: 10, recent: 20, queued: 5 }
    }

    #[test]
    fn overview_groups() {
        let mut reply = vec![Int(100), Int(5), Int(2), text("pro")];
        reply.extend([Int(1), text("alice"), text("email"), Int(3), text("150")]);
        reply.push(Int(1));
        reply.extend(completion("t9", "bob", 90, 95));
        reply.extend([text(r#"{"job":7}"#), text("email"), text("2")]);
        reply.extend([Int(1), text("t7"), text("carl"), text("render"), Int(2), Int(95), Int(10_095)]);
        reply.extend([
            Int(2),
            text("q1"),
            text("150"),
            text(""),
            text("1"),
            text("q2"),
            text("1150"),
            text("true"),
            text("4"),
        ]);
        reply.extend([Int(2), text("98"), text("99*4")]);
        let one = [LaneKey("alice:email".into())];
        assert_eq!(call(&one).args(), ["10", "20", "5", "", "alice:email"]);
        let Ok(overview) = read_reply(&call(&one), &reply) else { panic!("parse failed") };
        assert_eq!((overview.now, overview.queued_tasks, overview.waiting_users), (100, 5, 2));
        assert_eq!(overview.tier.as_deref(), Some("pro"));
        assert_eq!(overview.next_due, vec![("alice".to_string(), "email".to_string(), 3, 150)]);
        assert_eq!(overview.recent.len(), 1);
        assert_eq!(overview.recent[0].payload.as_ref().map(|p| p.get()), Some(r#"{"job":7}"#));
        assert_eq!((overview.recent[0].kind.as_str(), overview.recent[0].cost), ("email", 2));
        let claim = &overview.claims[0];
        assert_eq!((claim.task_id.as_str(), claim.kind.as_str(), claim.attempt), ("t7", "render", 2));
        assert_eq!((claim.started_at, claim.deadline, overview.claims.len()), (95, 10_095, 1));
        let lane = &overview.lanes[0];
        let queued: Vec<_> = lane
            .queued
            .iter()
            .map(|q| (q.task_id.as_str(), q.slot, q.cost, q.payload.as_ref().map(|p| p.get())))
            .collect();
        assert_eq!(queued, [("q1", 150, 1, None), ("q2", 1_150, 4, Some("true"))]);
        assert_eq!(lane.completed, vec![(98, 1), (99, 4)]);
        let two = [LaneKey("a".into()), LaneKey("b".into())];
        assert!(read_reply(&call(&two), &reply).is_err());
        // One lane fewer than the reply holds is a bug too.
        assert!(read_reply(&call(&[]), &reply).is_err());
        assert!(read_reply(&call(&[]), &[Int(1), Int(2), Int(3), text(""), Int(5)]).is_err());
        // No user watched: no tier, no lanes.
        let Ok(idle) = read_reply(&call(&[]), &[Int(1), Int(2), Int(3), text(""), Int(0), Int(0), Int(0)]) else {
            panic!("parse failed")
        };
        assert!(
            idle.tier.is_none()
                && idle.lanes.is_empty()
                && idle.next_due.is_empty()
                && idle.recent.is_empty()
                && idle.claims.is_empty()
        );
        // An item less.
        assert!(read_reply(&call(&one), &reply[..reply.len() - 1]).is_err());
    }
}
