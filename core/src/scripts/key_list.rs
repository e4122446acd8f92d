//! `key_list.lua`: a user's API keys.

use crate::keys::{Keys, UserKey};
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{KEY_LIST, Script};

pub struct KeyList<'a> {
    pub keys: &'a Keys,
    pub user_id: &'a str,
}

impl Call for KeyList<'_> {
    /// (key id, created-at), in key id order.
    type Output = Vec<(String, i64)>;

    fn script(&self) -> &'static Script {
        &KEY_LIST
    }

    fn args(&self) -> Vec<String> {
        vec![self.keys.user_api_keys(&UserKey::new(self.user_id))]
    }

    /// `[id, created-at, …]`.
    fn parse(&self, reply: &mut Cursor) -> Result<Vec<(String, i64)>, Unexpected> {
        let mut keys = Vec::new();
        while !reply.at_end() {
            keys.push((reply.text()?, reply.int()?));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::tests::text;
    use super::*;

    #[test]
    fn pairs_to_the_end() {
        let keys = Keys::new("taskq:", "task_log");
        let call = KeyList { keys: &keys, user_id: "alice" };
        assert_eq!(call.args(), ["taskq:apikeys:alice"]);
        let reply = [text("k1"), text("5"), text("k2"), text("6")];
        assert_eq!(read_reply(&call, &reply), Ok(vec![("k1".to_string(), 5), ("k2".to_string(), 6)]));
        assert_eq!(read_reply(&call, &[]), Ok(Vec::new()));
        assert!(read_reply(&call, &reply[..3]).is_err());
    }
}
