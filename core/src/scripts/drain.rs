//! `drain.lua`: the drainer's step (the outcomes of its deliveries, the lease, then what is
//! due).

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{DRAIN, Script};
use crate::scripts::shared::{Claim, Completion, claims, counted_completions};

/// Records `outcomes`, takes or renews the lease (`token`, or `handoff` it was handed), runs
/// what is due for up to `batch` lanes, claiming about `claim_limit` delivery attempts at most,
/// and answers when the next task is due.
pub struct Drain<'a> {
    pub token: &'a str,
    pub handoff: &'a str,
    pub lease_ttl_ms: i64,
    pub batch: i64,
    pub claim_limit: i64,
    pub outcomes: &'a [Outcome],
}

/// How a delivery attempt ended, as `settle` (lib.lua) records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub task_id: String,
    pub attempt: u32,
    pub result: Ended,
    /// The HTTP status, or the error's name (`timeout`, `connection`...).
    pub status: String,
    /// From the request's start to the answer's head (none without an answer).
    pub duration_ms: Option<u64>,
    /// The backend's `Retry-After`, in ms (0 for none).
    pub retry_after_ms: i64,
}

impl Outcome {
    /// Its six arguments, as `settle` (lib.lua) takes them.
    pub(crate) fn args(&self) -> [String; 6] {
        [
            self.task_id.clone(),
            self.attempt.to_string(),
            self.result.word().to_string(),
            self.status.clone(),
            self.duration_ms.map_or_else(String::new, |ms| ms.to_string()),
            self.retry_after_ms.to_string(),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// A 2xx: the task is completed.
    Completed,
    /// To try again (408, 429, 5xx, a timeout, a connection error), if attempts are left.
    Retry,
    /// Any other answer: the task fails now.
    Failed,
}

impl Ended {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Ended::Completed => "ok",
            Ended::Retry => "retry",
            Ended::Failed => "fail",
        }
    }
}

#[derive(Debug)]
pub enum Drained {
    /// Another drainer holds the lease (its token): we help, claiming as the leader does.
    Busy {
        holder: String,
        next_due_in_ms: i64,
        more_due_now: bool,
        ran: Vec<Completion>,
        claims: Vec<Claim>,
    },
    /// Nothing is queued or in flight; the lease was dropped.
    Idle {
        ran: Vec<Completion>,
    },
    Active {
        next_due_in_ms: i64,
        more_due_now: bool,
        ran: Vec<Completion>,
        claims: Vec<Claim>,
    },
}

impl Call for Drain<'_> {
    type Output = Drained;

    fn script(&self) -> &'static Script {
        &DRAIN
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            self.token.to_string(),
            self.handoff.to_string(),
            self.lease_ttl_ms.to_string(),
            self.batch.to_string(),
            self.claim_limit.to_string(),
        ];
        args.extend(self.outcomes.iter().flat_map(Outcome::args));
        args
    }

    /// `['busy', holder, …]` or `[state, …]`, then: ms until next due, more due now?, k,
    /// completions×k, claims….
    fn parse(&self, reply: &mut Cursor) -> Result<Drained, Unexpected> {
        let state = reply.text()?;
        let holder = if state == "busy" { Some(reply.text()?) } else { None };
        let next_due_in_ms = reply.int()?;
        let more_due_now = reply.flag()?;
        let ran = counted_completions(reply)?;
        let claims = claims(reply)?;
        match (state.as_str(), holder) {
            ("busy", Some(holder)) => Ok(Drained::Busy { holder, next_due_in_ms, more_due_now, ran, claims }),
            ("idle", _) if claims.is_empty() => Ok(Drained::Idle { ran }),
            ("idle", _) => Err(reply.fail("an idle drain claimed a delivery")),
            ("active", _) => Ok(Drained::Active { next_due_in_ms, more_due_now, ran, claims }),
            (other, _) => Err(reply.fail(format_args!("drain answered {other:?}"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::{self, Int};
    use super::super::reply::tests::text;
    use super::super::shared::tests::completion;
    use super::*;

    const CALL: Drain =
        Drain { token: "tok", handoff: "", lease_ttl_ms: 2_000, batch: 50, claim_limit: 16, outcomes: &[] };

    pub(crate) fn a_claim() -> Vec<Reply> {
        vec![
            text("t3"),
            text("ann"),
            text("mail"),
            Int(2),
            Int(1),
            Int(10),
            Int(13),
            text(r#"{"a":1}"#),
            text(""),
            Int(23),
        ]
    }

    #[test]
    fn drain_replies() {
        assert_eq!(CALL.args(), ["tok", "", "2000", "50", "16"]);
        let mut reply = vec![text("busy"), text("tok"), Int(7), Int(0), Int(0)];
        reply.extend(a_claim());
        let busy = read_reply(&CALL, &reply);
        assert!(matches!(busy, Ok(Drained::Busy { holder, next_due_in_ms: 7, more_due_now: false, ran, claims })
            if holder == "tok" && ran.is_empty() && claims.len() == 1));
        let mut reply = vec![text("active"), Int(12), Int(1), Int(2)];
        reply.extend(completion("t1", "bob", 10, 11));
        reply.extend(completion("t2", "eve", 10, 12));
        reply.extend(a_claim());
        let Ok(Drained::Active { next_due_in_ms, more_due_now, ran, claims }) = read_reply(&CALL, &reply) else {
            panic!("not active")
        };
        assert_eq!((next_due_in_ms, more_due_now, ran.len()), (12, true, 2));
        let expected = Claim {
            task_id: "t3".into(),
            user_id: "ann".into(),
            kind: "mail".into(),
            cost: 2,
            attempt: 1,
            slot: 10,
            started_at: 13,
            payload: Some(r#"{"a":1}"#.into()),
            token: None,
            deadline: 23,
        };
        assert_eq!(claims, [expected]);
        assert!(
            matches!(read_reply(&CALL, &[text("idle"), Int(0), Int(0), Int(0)]), Ok(Drained::Idle { ran }) if ran.is_empty())
        );
        assert!(read_reply(&CALL, &[text("active"), Int(5)]).is_err());
        // An item more, a claim cut short, or fewer completions than counted.
        assert!(read_reply(&CALL, &[text("busy"), text("tok"), Int(0), text("x")]).is_err());
        assert!(read_reply(&CALL, &reply[..reply.len() - 1]).is_err());
        assert!(read_reply(&CALL, &[text("idle"), Int(0), Int(0), Int(1)]).is_err());
        let mut idle_claiming = vec![text("idle"), Int(0), Int(0), Int(0)];
        idle_claiming.extend(a_claim());
        assert!(read_reply(&CALL, &idle_claiming).is_err());
    }

    #[test]
    fn outcomes_follow_the_drains_own_arguments() {
        let outcomes = [
            Outcome {
                task_id: "t1".into(),
                attempt: 2,
                result: Ended::Retry,
                status: "503".into(),
                duration_ms: Some(7),
                retry_after_ms: 3_000,
            },
            Outcome {
                task_id: "t2".into(),
                attempt: 1,
                result: Ended::Completed,
                status: "timeout".into(),
                duration_ms: None,
                retry_after_ms: 0,
            },
        ];
        let call = Drain { outcomes: &outcomes, ..CALL };
        let expected = [
            "tok", "", "2000", "50", "16", "t1", "2", "retry", "503", "7", "3000", "t2", "1", "ok", "timeout", "", "0",
        ];
        assert_eq!(call.args(), expected);
    }
}
