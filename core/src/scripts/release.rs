//! `release.lua`: drops an Idempotency-Key reservation that never named a task.

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{RELEASE, Script};

/// Drops the reservation at `idempotency_key` (the record's key) if it is still only that.
pub struct Release<'a> {
    pub idempotency_key: &'a str,
}

impl Call for Release<'_> {
    type Output = ();

    fn script(&self) -> &'static Script {
        &RELEASE
    }

    fn args(&self) -> Vec<String> {
        vec![self.idempotency_key.to_string()]
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
    fn it_answers_one_item() {
        let call = Release { idempotency_key: "k" };
        assert_eq!(call.args(), ["k"]);
        assert_eq!(read_reply(&call, &[Int(0)]), Ok(()));
        assert!(read_reply(&call, &[]).is_err());
        assert!(read_reply(&call, &[Int(0), Int(0)]).is_err());
    }
}
