//! `admit.lua`: the whole admission of one task with the `redis` ledger, in one round trip.

use crate::keys::LaneKey;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{ADMIT, Script};
use crate::scripts::shared::Earlier;
use crate::scripts::shared::{Admitted, earlier, filed, tier};

/// Admits one task: its lane, who sent it, where the lane's ledger and the Idempotency-Key
/// record are, the task and its policy.
pub struct Admit<'a> {
    pub lane: &'a LaneKey,
    pub user_id: &'a str,
    pub ledger_key: &'a str,
    /// The Idempotency-Key record's key.
    pub idempotency_key: Option<&'a str>,
    /// Most tasks queued per lane (0: no limit).
    pub max_backlog: u64,
    pub task_id: &'a str,
    /// What marks the task's ledger entry.
    pub tag: &'a str,
    /// The payload's JSON text.
    pub payload: Option<&'a str>,
    pub policy: &'a AdmitPolicy<'a>,
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
    /// The kind's delivery (`Delivery::spec`), when it has a target.
    pub delivery: Option<&'a str>,
    pub overrides: Vec<(&'a str, &'a str)>,
}

/// What `admit` did. `tier` is the user's tier that chose the policy (`None`: the built-in
/// one).
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

impl Call for Admit<'_> {
    type Output = Admission;

    fn script(&self) -> &'static Script {
        &ADMIT
    }

    fn args(&self) -> Vec<String> {
        let policy = self.policy;
        let mut args: Vec<String> = [
            &self.lane.0,
            self.user_id,
            self.ledger_key,
            self.idempotency_key.unwrap_or(""),
            &self.max_backlog.to_string(),
            self.task_id,
            self.tag,
            self.payload.unwrap_or(""),
            policy.kind,
            &policy.cost.to_string(),
            &policy.keep.to_string(),
            &policy.keep_ms.to_string(),
            policy.tier_key.as_deref().unwrap_or(""),
            policy.spec,
            policy.delivery.unwrap_or(""),
        ]
        .map(str::to_string)
        .into();
        for (tier, spec) in &policy.overrides {
            args.extend([tier.to_string(), spec.to_string()]);
        }
        args
    }

    /// `['earlier', now, earlier, ledger present, ledger, tier]`, `['full', now]`, `['corrupt',
    /// ledger]`, `['costly', tier, quota, window ms]` or `['admitted', slot, ledger, tier,
    /// <file_tasks reply>…]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Admission, Unexpected> {
        match reply.text()?.as_str() {
            "earlier" => {
                let now = reply.int()?;
                Ok(Admission::Earlier {
                    earlier: earlier(reply)?,
                    now,
                    ledger: crate::scripts::shared::ledger(reply)?,
                    tier: tier(reply)?,
                })
            }
            "full" => {
                reply.int()?;
                Ok(Admission::BacklogFull)
            }
            "costly" => {
                let tier = tier(reply)?;
                let quota = u32::try_from(reply.int()?).map_err(|_| reply.fail("quota out of range"))?;
                Ok(Admission::Costly { tier, quota, window_ms: reply.int()? })
            }
            "corrupt" => {
                let stored = reply.text()?;
                Err(reply.fail(format_args!("the ledger holds a foreign value {stored:?}")))
            }
            "admitted" => {
                let (slot, ledger, tier) = (reply.int()?, reply.bytes()?.to_vec(), tier(reply)?);
                let mut filed = filed(reply, 1)?;
                let placement = filed.placements.pop().ok_or_else(|| reply.fail("admit placed no task"))?;
                if filed.started.len() > 1 {
                    return Err(reply.fail("admit started more attempts than it filed tasks"));
                }
                Ok(Admission::Admitted {
                    slot,
                    ledger,
                    tier,
                    filed: Admitted {
                        placement,
                        now: filed.now,
                        ran: filed.ran,
                        wake_unheard: filed.wake_unheard,
                        started: filed.started.pop(),
                    },
                })
            }
            other => Err(reply.fail(format_args!("admit answered {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Placement;
    use super::super::read_reply;
    use super::super::reply::Reply::{self, Int};
    use super::super::reply::tests::text;
    use super::super::shared::tests::completion;
    use super::*;

    const POLICY: AdmitPolicy = AdmitPolicy {
        kind: "default",
        cost: 1,
        keep: 20,
        keep_ms: 60_000,
        tier_key: None,
        spec: "",
        delivery: None,
        overrides: Vec::new(),
    };
    const CALL: Admit = Admit {
        lane: &LaneKey(String::new()),
        user_id: "",
        ledger_key: "",
        idempotency_key: None,
        max_backlog: 0,
        task_id: "",
        tag: "",
        payload: None,
        policy: &POLICY,
    };

    fn admitted() -> Vec<Reply> {
        let mut reply = vec![
            text("admitted"),
            Int(2_000),
            text("v1 2 1000:a 2000:b*3"),
            text("pro"),
            text("filed"),
            Int(1_006),
            Int(1),
            Int(1),
            text("queued"),
            Int(2),
            Int(1),
        ];
        reply.extend(completion("t1", "alice", 1_000, 1_005));
        reply
    }

    #[test]
    fn an_admission_that_started_its_attempt_brings_its_claim() {
        let mut reply = vec![
            text("admitted"),
            Int(1_006),
            text("v1 1 1006:a"),
            text(""),
            text("filed"),
            Int(1_006),
            Int(0),
            Int(1),
            text("running"),
            Int(1_006),
            Int(0),
        ];
        reply.extend(crate::scripts::drain::tests::a_claim());
        let Ok(Admission::Admitted { filed, .. }) = read_reply(&CALL, &reply) else { panic!("not admitted") };
        assert!(matches!(filed.placement, Placement::Running { since: 1_006 }));
        assert_eq!(filed.started.map(|c| c.task_id), Some("t3".to_string()));
        // A claim cut short.
        assert!(read_reply(&CALL, &reply[..reply.len() - 1]).is_err());
    }

    #[test]
    fn admissions_of_every_kind() {
        let Ok(Admission::Admitted { slot, ledger, tier, filed }) = read_reply(&CALL, &admitted()) else {
            panic!("not admitted")
        };
        assert_eq!(
            (slot, ledger.as_slice(), filed.now, filed.ran.len(), filed.wake_unheard),
            (2_000, &b"v1 2 1000:a 2000:b*3"[..], 1_006, 1, true)
        );
        assert_eq!(tier.as_deref(), Some("pro"));
        assert!(matches!(filed.placement, Placement::Queued { position: 2 }));

        let reply = [text("earlier"), Int(7), text("0123456789abcdef01234567"), Int(1), text("v1 1 5:a"), text("")];
        let Ok(Admission::Earlier { earlier: Earlier::Task(id), now: 7, ledger: Some(ledger), tier: None }) =
            read_reply(&CALL, &reply)
        else {
            panic!("not a replay")
        };
        assert_eq!((id.as_str(), ledger.as_slice()), ("0123456789abcdef01234567", &b"v1 1 5:a"[..]));
        let reply = [text("earlier"), Int(7), text("pending"), Int(0), text(""), text("")];
        assert!(matches!(
            read_reply(&CALL, &reply),
            Ok(Admission::Earlier { earlier: Earlier::Pending, ledger: None, .. })
        ));
        assert!(matches!(read_reply(&CALL, &[text("full"), Int(7)]), Ok(Admission::BacklogFull)));
        let costly = read_reply(&CALL, &[text("costly"), text("pro"), Int(5), Int(60_000)]);
        assert!(matches!(costly, Ok(Admission::Costly { quota: 5, window_ms: 60_000, tier: Some(t) }) if t == "pro"));
        // A foreign value in the ledger's key is reported, not overwritten.
        assert!(read_reply(&CALL, &[text("corrupt"), text("hello")]).is_err());
        // An admission that filed no task, or two, is a bug.
        let none = [
            text("admitted"),
            Int(2_000),
            text("v1 1 2000:b"),
            text(""),
            text("filed"),
            Int(1),
            Int(0),
            Int(0),
            Int(0),
        ];
        assert!(read_reply(&CALL, &none).is_err());
    }

    #[test]
    fn an_item_more_or_less_is_refused() {
        let reply = admitted();
        // A completion cut short, or an item after the last.
        assert!(read_reply(&CALL, &reply[..reply.len() - 1]).is_err());
        assert!(read_reply(&CALL, &[&reply[..], &[text("x")]].concat()).is_err());
        assert!(read_reply(&CALL, &[text("full"), Int(7), Int(8)]).is_err());
        assert!(read_reply(&CALL, &[text("full")]).is_err());
        assert!(read_reply(&CALL, &[text("costly"), text("pro"), Int(5)]).is_err());
    }

    #[test]
    fn its_arguments_in_the_scripts_order() {
        let lane = LaneKey("alice:email".into());
        let policy = AdmitPolicy {
            kind: "email",
            cost: 3,
            keep: 20,
            keep_ms: 60_000,
            tier_key: Some("taskq:tier:alice".into()),
            spec: "20/60000",
            delivery: Some("10000/5/2"),
            overrides: vec![("pro", "50/60000")],
        };
        let call = Admit {
            lane: &lane,
            user_id: "alice",
            ledger_key: "taskq:ledger:alice:email",
            idempotency_key: None,
            max_backlog: 10,
            task_id: "0123456789abcdef01234567",
            tag: "0123456789ab",
            payload: Some("{}"),
            policy: &policy,
        };
        let expected = [
            "alice:email",
            "alice",
            "taskq:ledger:alice:email",
            "",
            "10",
            "0123456789abcdef01234567",
            "0123456789ab",
            "{}",
            "email",
            "3",
            "20",
            "60000",
            "taskq:tier:alice",
            "20/60000",
            "10000/5/2",
            "pro",
            "50/60000",
        ];
        assert_eq!(call.args(), expected);
    }
}
