//! The scripts that take one argument and answer only `0`: `count_status.lua`,
//! `release.lua` and `handover.lua`.

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{COUNT_STATUS, HANDOVER, RELEASE, Script};

pub struct UnitScript {
    script: &'static Script,
    arg: String,
}

impl UnitScript {
    /// Counts an HTTP answer (its `status`) that no script counted.
    pub fn count_status(status: u16) -> UnitScript {
        UnitScript { script: &COUNT_STATUS, arg: status.to_string() }
    }

    /// Drops the reservation at `idempotency_key` (the record's key) if it is still only that:
    /// admission stopped before it stored a task.
    pub fn release(idempotency_key: &str) -> UnitScript {
        UnitScript { script: &RELEASE, arg: idempotency_key.to_string() }
    }

    /// A leader's handover: frees the lease if `token` still holds it, and publishes the tick
    /// carrying `token`.
    pub fn handover(token: &str) -> UnitScript {
        UnitScript { script: &HANDOVER, arg: token.to_string() }
    }
}

impl Call for UnitScript {
    type Output = ();

    fn script(&self) -> &'static Script {
        self.script
    }

    fn args(&self) -> Vec<String> {
        vec![self.arg.clone()]
    }

    /// `0`.
    fn parse(&self, reply: &mut Cursor) -> Result<(), Unexpected> {
        reply.int().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::*;

    #[test]
    fn each_takes_its_argument_and_answers_one_item() {
        for (call, name, arg) in [
            (UnitScript::count_status(503), "count_status", "503"),
            (UnitScript::release("k"), "release", "k"),
            (UnitScript::handover("t"), "handover", "t"),
        ] {
            assert!(call.script().function().ends_with(&format!("_{name}")), "{}", call.script().function());
            assert_eq!(call.args(), [arg]);
            assert_eq!(read_reply(&call, &[Int(0)]), Ok(()));
            assert!(read_reply(&call, &[]).is_err());
            assert!(read_reply(&call, &[Int(0), Int(0)]).is_err());
        }
    }
}
