//! `file.lua`: files the tasks of one lane whose slots the `kv` ledger committed.

use crate::keys::LaneKey;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{FILE, Script};
use crate::scripts::shared::{Filed, filed};
use std::rc::Rc;

/// Files `tasks` (in slot order) of one lane (of `kind`); the ledger expires `keep_ms`
/// after the last slot.
pub struct File<'a> {
    pub lane: &'a LaneKey,
    pub user_id: &'a str,
    pub kind: &'a str,
    pub ledger_key: &'a str,
    pub keep_ms: i64,
    pub tasks: &'a [TaskToFile],
    /// How often the ledger's compare-and-set was retried (counted in the metrics).
    pub cas_retries: u32,
}

/// A task to file: its id, its committed slot, the Idempotency-Key record that will name
/// it, its payload (JSON text), its cost and its policy (`Policy::spec`).
pub struct TaskToFile {
    pub task_id: String,
    pub slot: i64,
    pub idempotency_key: Option<String>,
    pub payload: Option<Rc<str>>,
    pub cost: u32,
    pub spec: Rc<str>,
}

impl Call for File<'_> {
    type Output = Filed;

    fn script(&self) -> &'static Script {
        &FILE
    }

    fn args(&self) -> Vec<String> {
        let last_slot = self.tasks.iter().map(|t| t.slot).max().unwrap_or(0);
        // Once the last slot is older than the longest window the ledger constrains nothing.
        let expire_at = last_slot + self.keep_ms + 1_000;
        let mut args = vec![
            self.lane.0.clone(),
            self.user_id.to_string(),
            self.ledger_key.to_string(),
            expire_at.to_string(),
            self.cas_retries.to_string(),
            self.kind.to_string(),
        ];
        for task in self.tasks {
            args.extend([
                task.task_id.clone(),
                task.slot.to_string(),
                task.idempotency_key.clone().unwrap_or_default(),
                task.payload.as_deref().unwrap_or("").to_string(),
                task.cost.to_string(),
                task.spec.to_string(),
            ]);
        }
        args
    }

    /// `file_tasks`'s reply (lib.lua), for as many tasks as were sent.
    fn parse(&self, reply: &mut Cursor) -> Result<Filed, Unexpected> {
        filed(reply, self.tasks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Placement;
    use super::super::read_reply;
    use super::super::reply::Reply::{Int, Nil};
    use super::super::reply::tests::text;
    use super::super::shared::tests::completion;
    use super::*;

    fn task(id: &str, slot: i64) -> TaskToFile {
        TaskToFile { task_id: id.into(), slot, idempotency_key: None, payload: None, cost: 1, spec: "1/1000".into() }
    }

    fn call<'a>(tasks: &'a [TaskToFile], lane: &'a LaneKey) -> File<'a> {
        File { lane, user_id: "alice", kind: "default", ledger_key: "l", keep_ms: 60_000, tasks, cas_retries: 0 }
    }

    #[test]
    fn filed_tasks_carry_their_placements_and_completions() {
        let lane = LaneKey("alice".into());
        let two = [task("a", 1_000), task("b", 2_000)];
        let mut reply = vec![
            text("filed"),
            Int(1_006),
            Int(0),
            Int(2),
            text("completed"),
            Int(1_005),
            text("queued"),
            Int(1),
            Int(1),
        ];
        reply.extend(completion("t1", "alice", 1_000, 1_005));
        let Ok(Filed { placements, now, ran, wake_unheard, started }) = read_reply(&call(&two, &lane), &reply) else {
            panic!("not filed")
        };
        assert!(!wake_unheard && started.is_empty());
        assert!(matches!(
            placements[..],
            [Placement::Completed { completed_at: 1_005 }, Placement::Queued { position: 1 }]
        ));
        assert_eq!(now, 1_006);
        assert_eq!(ran.len(), 1);
        assert_eq!((ran[0].user_id.as_str(), ran[0].slot, ran[0].completed_at), ("alice", 1_000, 1_005));
        // A reply for another number of tasks than were sent is a bug, not a guess.
        assert!(read_reply(&call(&two[..1], &lane), &reply).is_err());
        // An item less or more.
        assert!(read_reply(&call(&two, &lane), &reply[..reply.len() - 1]).is_err());
        assert!(read_reply(&call(&two, &lane), &[&reply[..], &[Int(1)]].concat()).is_err());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let lane = LaneKey("alice".into());
        let one = [task("a", 1_000)];
        for reply in [
            vec![],
            vec![text("admitted"), Int(1), Int(1)],
            vec![text("filed"), Int(1), Int(0), Int(1), text("queued")],
            vec![text("filed"), Int(1), Int(0), Int(1), text("later"), Int(2)],
            vec![text("filed"), Int(1), Int(0), Int(1), text("queued"), Int(2), text("t1"), text("alice")],
            vec![text("filed"), Int(1), Int(2), Int(1), text("queued"), Int(2)],
            vec![Nil, Int(1), Int(2)],
        ] {
            assert!(read_reply(&call(&one, &lane), &reply).is_err(), "{reply:?}");
        }
    }

    #[test]
    fn its_arguments_six_per_task() {
        let lane = LaneKey("alice".into());
        let mut tasks = [task("a", 1_000), task("b", 2_000)];
        tasks[1].payload = Some("[1]".into());
        tasks[1].idempotency_key = Some("k".into());
        let args = File { cas_retries: 2, ..call(&tasks, &lane) }.args();
        assert_eq!(args[..6], ["alice", "alice", "l", "63000", "2", "default"]);
        assert_eq!(args[6..], ["a", "1000", "", "", "1", "1/1000", "b", "2000", "k", "[1]", "1", "1/1000"]);
    }
}
