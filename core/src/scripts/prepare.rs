//! `prepare.lua`: what an admission with the `kv` ledger starts from.

use crate::keys::LaneKey;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{PREPARE, Script};
use crate::scripts::shared::Earlier;
use crate::scripts::shared::{earlier, tier};

/// Reads the Redis clock, an earlier request's task, the lane's backlog and the user's tier,
/// and reserves the Idempotency-Key when there is room.
pub struct Prepare<'a> {
    pub lane: &'a LaneKey,
    /// The Idempotency-Key record's key.
    pub idempotency_key: Option<&'a str>,
    /// Most tasks queued per lane (0: no limit).
    pub max_backlog: u64,
    /// The user's tier key, when some tier overrides the kind (otherwise it is not read).
    pub tier_key: Option<&'a str>,
}

/// What `prepare` found.
#[derive(Debug)]
pub struct Prepared {
    pub now: i64,
    /// The lane's queue holds `max_backlog` tasks (nothing was reserved).
    pub backlog_full: bool,
    pub earlier: Earlier,
    /// The user's tier (`None`: the built-in one).
    pub tier: Option<String>,
}

impl Call for Prepare<'_> {
    type Output = Prepared;

    fn script(&self) -> &'static Script {
        &PREPARE
    }

    fn args(&self) -> Vec<String> {
        let (idem, tier_key) = (self.idempotency_key.unwrap_or(""), self.tier_key.unwrap_or(""));
        vec![self.lane.0.clone(), idem.to_string(), self.max_backlog.to_string(), tier_key.to_string()]
    }

    /// `[now, backlog full (0/1), earlier, tier]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Prepared, Unexpected> {
        Ok(Prepared { now: reply.int()?, backlog_full: reply.flag()?, earlier: earlier(reply)?, tier: tier(reply)? })
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::super::reply::tests::text;
    use super::*;

    const CALL: Prepare =
        Prepare { lane: &LaneKey(String::new()), idempotency_key: None, max_backlog: 0, tier_key: None };

    #[test]
    fn prepared_with_and_without_an_earlier_request() {
        let reply = [Int(1_000), Int(1), text(""), text("pro")];
        let Ok(prepared) = read_reply(&CALL, &reply) else { panic!("parse failed") };
        assert_eq!((prepared.now, prepared.backlog_full, prepared.tier.as_deref()), (1_000, true, Some("pro")));
        assert!(matches!(prepared.earlier, Earlier::None));

        let reply = [Int(1_000), Int(0), text("pending"), text("")];
        assert!(matches!(read_reply(&CALL, &reply), Ok(Prepared { earlier: Earlier::Pending, tier: None, .. })));

        let reply = [Int(1_000), Int(0), text("0123456789abcdef01234567"), text("")];
        assert!(
            matches!(read_reply(&CALL, &reply).map(|p| p.earlier), Ok(Earlier::Task(id)) if id == "0123456789abcdef01234567")
        );
        // An item less or more than the contract is refused.
        assert!(read_reply(&CALL, &reply[..3]).is_err());
        assert!(read_reply(&CALL, &[&reply[..], &[Int(0)]].concat()).is_err());
    }

    #[test]
    fn its_arguments() {
        let lane = LaneKey("alice".into());
        let call = Prepare { lane: &lane, idempotency_key: Some("taskq:idem:alice:k"), max_backlog: 5, tier_key: None };
        assert_eq!(call.args(), ["alice", "taskq:idem:alice:k", "5", ""]);
    }
}
