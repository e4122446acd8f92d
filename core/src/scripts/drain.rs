//! `drain.lua`: the drainer's step (the lease, then what is due).

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{DRAIN, Script};
use crate::scripts::shared::{Completion, completions};

/// Takes or renews the lease (`token`, or `handoff` it was handed), runs what is due for up
/// to `batch` lanes, and answers when the next task is due.
pub struct Drain<'a> {
    pub token: &'a str,
    pub handoff: &'a str,
    pub lease_ttl_ms: i64,
    pub batch: i64,
}

#[derive(Debug)]
pub enum Drained {
    /// Another drainer holds the lease (its token).
    Busy {
        holder: String,
    },
    /// Nothing is queued; the lease was dropped.
    Idle {
        ran: Vec<Completion>,
    },
    Active {
        next_due_in_ms: i64,
        more_due_now: bool,
        ran: Vec<Completion>,
    },
}

impl Call for Drain<'_> {
    type Output = Drained;

    fn script(&self) -> &'static Script {
        &DRAIN
    }

    fn args(&self) -> Vec<String> {
        vec![self.token.to_string(), self.handoff.to_string(), self.lease_ttl_ms.to_string(), self.batch.to_string()]
    }

    /// `['busy', holder]` or `[state, ms until next due, more due now?, completions…]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Drained, Unexpected> {
        match reply.text()?.as_str() {
            "busy" => Ok(Drained::Busy { holder: reply.text()? }),
            "idle" => {
                // (No next instant and nothing more due.)
                reply.int()?;
                reply.int()?;
                Ok(Drained::Idle { ran: completions(reply)? })
            }
            "active" => Ok(Drained::Active {
                next_due_in_ms: reply.int()?,
                more_due_now: reply.flag()?,
                ran: completions(reply)?,
            }),
            other => Err(reply.fail(format_args!("drain answered {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::super::reply::tests::text;
    use super::super::shared::tests::completion;
    use super::*;

    const CALL: Drain = Drain { token: "tok", handoff: "", lease_ttl_ms: 2_000, batch: 50 };

    #[test]
    fn drain_replies() {
        assert_eq!(CALL.args(), ["tok", "", "2000", "50"]);
        assert!(
            matches!(read_reply(&CALL, &[text("busy"), text("tok")]), Ok(Drained::Busy { holder }) if holder == "tok")
        );
        let mut reply = vec![text("active"), Int(12), Int(1)];
        reply.extend(completion("t1", "bob", 10, 11));
        reply.extend(completion("t2", "eve", 10, 12));
        let Ok(Drained::Active { next_due_in_ms, more_due_now, ran }) = read_reply(&CALL, &reply) else {
            panic!("not active")
        };
        assert_eq!((next_due_in_ms, more_due_now, ran.len()), (12, true, 2));
        assert!(
            matches!(read_reply(&CALL, &[text("idle"), Int(0), Int(0)]), Ok(Drained::Idle { ran }) if ran.is_empty())
        );
        assert!(read_reply(&CALL, &[text("active"), Int(5)]).is_err());
        // An item more, or a completion cut short.
        assert!(read_reply(&CALL, &[text("busy"), text("tok"), text("x")]).is_err());
        assert!(read_reply(&CALL, &reply[..reply.len() - 1]).is_err());
    }
}
