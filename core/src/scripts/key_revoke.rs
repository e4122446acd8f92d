//! `key_revoke.lua`: deletes an API key.

use crate::keys::Keys;
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{KEY_REVOKE, Script};

pub struct KeyRevoke<'a> {
    pub keys: &'a Keys,
    pub key_id: &'a str,
}

impl Call for KeyRevoke<'_> {
    /// (its user, when), or `None` if there is no such key.
    type Output = Option<(String, i64)>;

    fn script(&self) -> &'static Script {
        &KEY_REVOKE
    }

    fn args(&self) -> Vec<String> {
        vec![self.keys.api_key(self.key_id), self.key_id.to_string()]
    }

    /// `[user id, when]`, or `[]` for an unknown key.
    fn parse(&self, reply: &mut Cursor) -> Result<Option<(String, i64)>, Unexpected> {
        if reply.at_end() {
            return Ok(None);
        }
        Ok(Some((reply.text()?, reply.int()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::super::reply::tests::text;
    use super::*;

    #[test]
    fn a_key_or_none() {
        let keys = Keys::new("taskq:", "task_log");
        let call = KeyRevoke { keys: &keys, key_id: "k1" };
        assert_eq!(call.args(), ["taskq:apikey:k1", "k1"]);
        assert_eq!(read_reply(&call, &[text("alice"), Int(9)]), Ok(Some(("alice".to_string(), 9))));
        assert_eq!(read_reply(&call, &[]), Ok(None));
        assert!(read_reply(&call, &[text("alice")]).is_err());
        assert!(read_reply(&call, &[text("alice"), Int(9), Int(9)]).is_err());
    }
}
