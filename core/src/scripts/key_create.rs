//! `key_create.lua`: stores a new API key (`auth = api_key`).

use crate::keys::{Keys, UserKey};
use crate::scripts::call::Call;
use crate::scripts::reply::{Cursor, Unexpected};
use crate::scripts::script::{KEY_CREATE, Script};

/// Stores the key `key_id` of `user_id` (its SHA-256, lowercase hex), or of a worker of
/// `worker_kinds` (`user_id` then '').
pub struct KeyCreate<'a> {
    pub keys: &'a Keys,
    pub key_id: &'a str,
    pub user_id: &'a str,
    pub worker_kinds: Option<&'a [String]>,
    pub digest: &'a [u8],
}

impl Call for KeyCreate<'_> {
    /// When it was made (Redis clock, ms).
    type Output = i64;

    fn script(&self) -> &'static Script {
        &KEY_CREATE
    }

    fn args(&self) -> Vec<String> {
        let set = match self.worker_kinds {
            Some(_) => self.keys.worker_keys(),
            None => self.keys.user_api_keys(&UserKey::new(self.user_id)),
        };
        let digest = String::from_utf8_lossy(self.digest).into_owned();
        let kinds = self.worker_kinds.map_or_else(String::new, |kinds| kinds.join(","));
        vec![self.keys.api_key(self.key_id), self.user_id.to_string(), digest, set, self.key_id.to_string(), kinds]
    }

    /// `created-at`.
    fn parse(&self, reply: &mut Cursor) -> Result<i64, Unexpected> {
        reply.int()
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_reply;
    use super::super::reply::Reply::Int;
    use super::*;

    #[test]
    fn its_arguments_and_reply() {
        let keys = Keys::new("taskq:", "task_log");
        let call = KeyCreate { keys: &keys, key_id: "k1", user_id: "a:b", worker_kinds: None, digest: b"ab12" };
        assert_eq!(call.args(), ["taskq:apikey:k1", "a:b", "ab12", "taskq:apikeys:a%3Ab", "k1", ""]);
        let kinds = ["render".to_string(), "ocr".to_string()];
        let worker = KeyCreate { user_id: "", worker_kinds: Some(&kinds), ..call };
        assert_eq!(worker.args(), ["taskq:apikey:k1", "", "ab12", "taskq:workerkeys", "k1", "render,ocr"]);
        assert_eq!(read_reply(&call, &[Int(7)]), Ok(7));
        assert!(read_reply(&call, &[]).is_err());
        assert!(read_reply(&call, &[Int(7), Int(7)]).is_err());
    }
}
