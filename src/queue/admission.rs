//! The calls that admit tasks (`admit.lua`; with the `kv` ledger `prepare.lua`, `file.lua`
//! and `release.lua`), answer for them (`poke.lua`, `position.lua`), withdraw them
//! (`cancel.lua`), and set the tier that chooses their policy.

use super::*;
use std::rc::Rc;

/// What `prepare` found.
pub struct Prepared {
    pub now: i64,
    /// The lane's queue holds `max_backlog` tasks (nothing was reserved).
    pub backlog_full: bool,
    pub earlier: Earlier,
    /// The user's tier (`None`: the built-in one).
    pub tier: Option<String>,
}

/// What `admit` (the whole admission with the `redis` ledger) did. `tier` is the user's
/// tier that chose the policy (`None`: the built-in one).
pub enum Admission {
    /// The Idempotency-Key was used before: what it names, the Redis clock, and the lane's
    /// ledger as stored.
    Earlier { earlier: Earlier, now: i64, ledger: Option<Vec<u8>>, tier: Option<String> },
    /// The lane's queue holds `max_backlog` tasks: nothing was stored.
    BacklogFull,
    /// The task costs more than a window of its policy holds: it could never run.
    Costly { tier: Option<String>, quota: u32, window_ms: i64 },
    /// The task was stored at `slot` (and run, if its slot was now); `ledger` is the lane's
    /// ledger after it.
    Admitted { slot: i64, ledger: Vec<u8>, tier: Option<String>, filed: Admitted },
}

/// What `admit.lua` needs besides the task: its lane's policy and where the user's tier is.
pub struct AdmitPolicy<'a> {
    pub kind: &'a str,
    pub cost: u32,
    /// Ledger entries to keep, and for how long (ms): what the lane's policies can look at.
    pub keep: u32,
    pub keep_ms: i64,
    /// The user's tier key, when some tier overrides the kind (otherwise it is not read).
    pub tier_key: Option<String>,
    /// The kind's built-in policy, and each overriding tier's (`Policy::spec`).
    pub spec: &'a str,
    pub overrides: Vec<(&'a str, &'a str)>,
}

/// What an earlier request with the same Idempotency-Key left.
pub enum Earlier {
    None,
    /// That request is still being admitted.
    Pending,
    Task(String),
}

/// What `DELETE /api/v1/task/{id}` found (`cancel.lua`).
pub enum Cancelled {
    /// Cancelled now, or by an earlier request, at this instant.
    Cancelled {
        at: i64,
    },
    /// It had already run.
    Completed {
        at: i64,
    },
    Unknown,
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

/// What `file_tasks` (lib.lua) did: one placement per task, in the order given.
pub struct Filed {
    pub placements: Vec<Placement>,
    /// The Redis clock when the script ran.
    pub now: i64,
    /// Tasks the call ran (ours, or the user's overdue ones).
    pub ran: Vec<Completion>,
}

impl Queue<'_> {
    /// Reads what an admission with the `kv` ledger starts from (`prepare.lua`).
    pub async fn prepare(
        &self,
        lane: &LaneKey,
        idem: Option<&str>,
        tier_key: Option<&str>,
    ) -> Result<Prepared, StoreError> {
        let max_backlog = self.config.max_backlog.to_string();
        let args = [&lane.0, idem.unwrap_or(""), &max_backlog, tier_key.unwrap_or("")];
        parse_prepared(&self.eval(&scripts::PREPARE, &args).await?)
    }

    /// The whole admission of one task with the `redis` ledger (`admit.lua`). `tag` marks
    /// the task's ledger entry; `idem` is the Idempotency-Key record's key.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        &self,
        lane: &LaneKey,
        user_id: &str,
        ledger_key: &str,
        idem: Option<&str>,
        task_id: &str,
        tag: &str,
        payload: Option<&str>,
        policy: &AdmitPolicy<'_>,
    ) -> Result<Admission, StoreError> {
        let max_backlog = self.config.max_backlog.to_string();
        let (cost, keep, keep_ms) = (policy.cost.to_string(), policy.keep.to_string(), policy.keep_ms.to_string());
        let mut args =
            vec![&lane.0, user_id, ledger_key, idem.unwrap_or(""), &max_backlog, task_id, tag, payload.unwrap_or("")];
        args.extend([policy.kind, &cost, &keep, &keep_ms, policy.tier_key.as_deref().unwrap_or(""), policy.spec]);
        for (tier, spec) in &policy.overrides {
            args.extend([*tier, *spec]);
        }
        parse_admission(&self.eval(&scripts::ADMIT, &args).await?)
    }

    /// Drops an idempotency reservation when admission did not get as far as storing a task.
    pub async fn release(&self, idem: &str) -> Result<(), StoreError> {
        self.eval(&scripts::RELEASE, &[idem]).await.map(|_| ())
    }

    /// The task's 1-based place in its lane's queue, 0 if it is not queued.
    pub async fn position(&self, lane: &LaneKey, task_id: &str) -> Result<i64, StoreError> {
        let reply = self.eval(&scripts::POSITION, &[&lane.0, task_id]).await?;
        int_at(&reply, 0)
    }

    /// Files tasks of one lane (of `kind`) whose slots the `kv` ledger committed
    /// (`file.lua`); the ledger expires `keep_ms` after the last slot.
    #[allow(clippy::too_many_arguments)]
    pub async fn file(
        &self,
        lane: &LaneKey,
        user_id: &str,
        kind: &str,
        ledger_key: &str,
        keep_ms: i64,
        tasks: &[TaskToFile],
        cas_retries: u32,
    ) -> Result<Filed, StoreError> {
        let last_slot = tasks.iter().map(|t| t.slot).max().unwrap_or(0);
        // Once the last slot is older than the longest window the ledger constrains nothing.
        let expire_at = (last_slot + keep_ms + 1_000).to_string();
        let retries = cas_retries.to_string();
        let numbers: Vec<(String, String)> = tasks.iter().map(|t| (t.slot.to_string(), t.cost.to_string())).collect();
        let mut args: Vec<&str> = vec![&lane.0, user_id, ledger_key, &expire_at, &retries, kind];
        for (task, (slot, cost)) in tasks.iter().zip(&numbers) {
            let (idem, payload) = (task.idempotency_key.as_deref(), task.payload.as_deref());
            args.extend([
                task.task_id.as_str(),
                slot.as_str(),
                idem.unwrap_or(""),
                payload.unwrap_or(""),
                cost,
                &task.spec,
            ]);
        }
        let reply = self.eval(&scripts::FILE, &args).await?;
        parse_filed(&reply, tasks.len())
    }

    /// Runs the lane's due head tasks now (`poke.lua`); `task_id`'s placement afterwards.
    pub async fn poke(&self, lane: &LaneKey, task_id: &str) -> Result<Admitted, StoreError> {
        let reply = self.eval(&scripts::POKE, &[&lane.0, task_id]).await?;
        parse_poked(&reply)
    }

    /// Cancels a queued task of `lane` (`cancel.lua`).
    pub async fn cancel(&self, lane: &LaneKey, task_id: &str) -> Result<Cancelled, StoreError> {
        let reply = self.eval(&scripts::CANCEL, &[&lane.0, task_id]).await?;
        let at = int_at(&reply, 1)?;
        match text_at(&reply, 0)?.as_str() {
            "cancelled" => Ok(Cancelled::Cancelled { at }),
            "completed" => Ok(Cancelled::Completed { at }),
            "unknown" => Ok(Cancelled::Unknown),
            other => Err(StoreError::Unexpected(format!("cancel answered {other:?} for task {task_id}"))),
        }
    }

    /// Sets the user's tier (at `tier_key`; `None`: back to the built-in one).
    pub async fn set_tier(&self, tier_key: &str, tier: Option<&str>) -> Result<(), StoreError> {
        match tier {
            Some(tier) => self.execute("SET", &[tier_key, tier]).await.map(|_| ()),
            None => self.execute("DEL", &[tier_key]).await.map(|_| ()),
        }
    }
}

/// What an earlier request with the same Idempotency-Key left: '' (nothing), 'pending', or
/// its task id.
fn earlier(text: &str) -> Earlier {
    match text {
        "" => Earlier::None,
        "pending" => Earlier::Pending,
        task_id => Earlier::Task(task_id.to_string()),
    }
}

/// `prepare.lua`: `[now, backlog full (0/1), earlier, tier]`.
fn parse_prepared(reply: &[RedisResult]) -> Result<Prepared, StoreError> {
    Ok(Prepared {
        now: int_at(reply, 0)?,
        backlog_full: int_at(reply, 1)? == 1,
        earlier: earlier(&text_at(reply, 2)?),
        tier: tier_at(reply, 3)?,
    })
}

/// `admit.lua`: `['earlier', now, earlier, ledger present, ledger, tier]`, `['full', now]`,
/// `['corrupt', ledger]`, `['costly', tier, quota, window ms]` or `['admitted', slot, ledger,
/// tier, <file_tasks reply>…]`.
fn parse_admission(reply: &[RedisResult]) -> Result<Admission, StoreError> {
    match text_at(reply, 0)?.as_str() {
        "earlier" => Ok(Admission::Earlier {
            earlier: earlier(&text_at(reply, 2)?),
            now: int_at(reply, 1)?,
            ledger: ledger_at(reply, 3)?,
            tier: tier_at(reply, 5)?,
        }),
        "full" => Ok(Admission::BacklogFull),
        "costly" => Ok(Admission::Costly {
            tier: tier_at(reply, 1)?,
            quota: u32::try_from(int_at(reply, 2)?)
                .map_err(|_| StoreError::Unexpected("quota out of range".to_string()))?,
            window_ms: int_at(reply, 3)?,
        }),
        "corrupt" => Err(StoreError::Unexpected(format!("the ledger holds a foreign value {:?}", text_at(reply, 1)?))),
        "admitted" => {
            let mut filed = parse_filed(reply.get(4..).unwrap_or_default(), 1)?;
            let placement =
                filed.placements.pop().ok_or_else(|| StoreError::Unexpected("admit placed no task".to_string()))?;
            Ok(Admission::Admitted {
                slot: int_at(reply, 1)?,
                ledger: ledger_text(reply, 2)?,
                tier: tier_at(reply, 3)?,
                filed: Admitted { placement, now: filed.now, ran: filed.ran },
            })
        }
        other => Err(StoreError::Unexpected(format!("admit answered {other:?}"))),
    }
}

/// `file_tasks` (lib.lua): `['filed', now, k, (status, completed_at | position)×k,
/// completions…]`.
fn parse_filed(reply: &[RedisResult], tasks: usize) -> Result<Filed, StoreError> {
    match text_at(reply, 0)?.as_str() {
        "filed" => {}
        other => return Err(StoreError::Unexpected(format!("filing answered {other:?}"))),
    }
    let count = int_at(reply, 2)?;
    if count != tasks as i64 {
        return Err(StoreError::Unexpected(format!("filed {count} tasks of {tasks}")));
    }
    let placements =
        (0..tasks).map(|i| placement(reply.get(3 + 2 * i..).unwrap_or_default())).collect::<Result<_, _>>()?;
    let ran = completions(reply.get(3 + 2 * tasks..).unwrap_or_default())?;
    Ok(Filed { placements, now: int_at(reply, 1)?, ran })
}

/// A `(status, completed_at | position)` pair.
fn placement(pair: &[RedisResult]) -> Result<Placement, StoreError> {
    let value = int_at(pair, 1)?;
    match text_at(pair, 0)?.as_str() {
        "completed" => Ok(Placement::Completed { completed_at: value }),
        "queued" => Ok(Placement::Queued { position: value }),
        other => Err(StoreError::Unexpected(format!("placement {other:?}"))),
    }
}

/// `poke.lua`: `[status, completed_at | position, now, completions…]`.
fn parse_poked(reply: &[RedisResult]) -> Result<Admitted, StoreError> {
    Ok(Admitted {
        placement: placement(reply)?,
        now: int_at(reply, 2)?,
        ran: completions(reply.get(3..).unwrap_or_default())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::{completion, text};
    use RedisResult::{Int64, Nil};

    #[test]
    fn prepared_with_and_without_an_earlier_request() {
        let reply = [Int64(1_000), Int64(1), text(""), text("pro")];
        let Ok(prepared) = parse_prepared(&reply) else { panic!("parse failed") };
        assert_eq!((prepared.now, prepared.backlog_full, prepared.tier.as_deref()), (1_000, true, Some("pro")));
        assert!(matches!(prepared.earlier, Earlier::None));

        let reply = [Int64(1_000), Int64(0), text("pending"), text("")];
        assert!(matches!(parse_prepared(&reply), Ok(Prepared { earlier: Earlier::Pending, tier: None, .. })));

        let reply = [Int64(1_000), Int64(0), text("0123456789abcdef01234567"), text("")];
        assert!(
            matches!(parse_prepared(&reply).map(|p| p.earlier), Ok(Earlier::Task(id)) if id == "0123456789abcdef01234567")
        );
        assert!(parse_prepared(&reply[..3]).is_err());
    }

    #[test]
    fn admissions_of_every_kind() {
        let mut reply = vec![
            text("admitted"),
            Int64(2_000),
            text("v1 2 1000:a 2000:b*3"),
            text("pro"),
            text("filed"),
            Int64(1_006),
            Int64(1),
            text("queued"),
            Int64(2),
        ];
        reply.extend(completion("t1", "alice", 1_000, 1_005));
        let Ok(Admission::Admitted { slot, ledger, tier, filed }) = parse_admission(&reply) else {
            panic!("not admitted")
        };
        assert_eq!(
            (slot, ledger.as_slice(), filed.now, filed.ran.len()),
            (2_000, &b"v1 2 1000:a 2000:b*3"[..], 1_006, 1)
        );
        assert_eq!(tier.as_deref(), Some("pro"));
        assert!(matches!(filed.placement, Placement::Queued { position: 2 }));

        let reply = [text("earlier"), Int64(7), text("0123456789abcdef01234567"), Int64(1), text("v1 1 5:a"), text("")];
        let Ok(Admission::Earlier { earlier: Earlier::Task(id), now: 7, ledger: Some(ledger), tier: None }) =
            parse_admission(&reply)
        else {
            panic!("not a replay")
        };
        assert_eq!((id.as_str(), ledger.as_slice()), ("0123456789abcdef01234567", &b"v1 1 5:a"[..]));
        let reply = [text("earlier"), Int64(7), text("pending"), Int64(0), text(""), text("")];
        assert!(matches!(
            parse_admission(&reply),
            Ok(Admission::Earlier { earlier: Earlier::Pending, ledger: None, .. })
        ));
        assert!(matches!(parse_admission(&[text("full"), Int64(7)]), Ok(Admission::BacklogFull)));
        let costly = parse_admission(&[text("costly"), text("pro"), Int64(5), Int64(60_000)]);
        assert!(matches!(costly, Ok(Admission::Costly { quota: 5, window_ms: 60_000, tier: Some(t) }) if t == "pro"));
        // A foreign value in the ledger's key is reported, not overwritten.
        assert!(matches!(parse_admission(&[text("corrupt"), text("hello")]), Err(StoreError::Unexpected(_))));
        // An admission that filed no task, or two, is a bug.
        assert!(
            parse_admission(&[
                text("admitted"),
                Int64(2_000),
                text("v1 1 2000:b"),
                text(""),
                text("filed"),
                Int64(1),
                Int64(0)
            ])
            .is_err()
        );
    }

    #[test]
    fn filed_tasks_carry_their_placements_and_completions() {
        let mut reply =
            vec![text("filed"), Int64(1_006), Int64(2), text("completed"), Int64(1_005), text("queued"), Int64(1)];
        reply.extend(completion("t1", "alice", 1_000, 1_005));
        let Ok(Filed { placements, now, ran }) = parse_filed(&reply, 2) else { panic!("not filed") };
        assert!(matches!(
            placements[..],
            [Placement::Completed { completed_at: 1_005 }, Placement::Queued { position: 1 }]
        ));
        assert_eq!(now, 1_006);
        assert_eq!(ran.len(), 1);
        assert_eq!((ran[0].user_id.as_str(), ran[0].slot, ran[0].completed_at), ("alice", 1_000, 1_005));
        // A reply for another number of tasks than were sent is a bug, not a guess.
        assert!(parse_filed(&reply, 1).is_err());
    }

    #[test]
    fn a_poke_answers_one_placement() {
        let reply = [text("queued"), Int64(4), Int64(2_000)];
        let Ok(admitted) = parse_poked(&reply) else { panic!("parse failed") };
        assert!(matches!(admitted.placement, Placement::Queued { position: 4 }) && admitted.ran.is_empty());
        assert_eq!(admitted.now, 2_000);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for reply in [
            vec![],
            vec![text("admitted"), Int64(1), Int64(1)],
            vec![text("filed"), Int64(1), Int64(1), text("queued")],
            vec![text("filed"), Int64(1), Int64(1), text("later"), Int64(2)],
            vec![text("filed"), Int64(1), Int64(1), text("queued"), Int64(2), text("t1"), text("alice")],
            vec![Nil, Int64(1), Int64(2)],
        ] {
            assert!(parse_filed(&reply, 1).is_err(), "{reply:?}");
        }
        assert!(parse_poked(&[text("queued"), text("x"), Int64(2)]).is_err());
    }
}
