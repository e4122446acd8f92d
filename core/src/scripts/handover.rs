//! `handover.lua`: a leader frees its lease and ticks.

use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{HANDOVER, Script};

/// Frees the lease if `token` still holds it, and publishes the tick carrying `token`.
pub struct Handover<'a> {
    pub token: &'a str,
}

impl Call for Handover<'_> {
    type Output = ();

    fn script(&self) -> &'static Script {
        &HANDOVER
    }

    fn args(&self) -> Vec<String> {
        vec![self.token.to_string()]
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
        let call = Handover { token: "t" };
        assert_eq!(call.args(), ["t"]);
        assert_eq!(read_reply(&call, &[Int(0)]), Ok(()));
        assert!(read_reply(&call, &[]).is_err());
        assert!(read_reply(&call, &[Int(0), Int(0)]).is_err());
    }
}
