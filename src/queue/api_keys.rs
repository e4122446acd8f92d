//! API keys (`auth = api_key`, see `auth.rs`): made, listed and revoked by the admin, and
//! looked up on every request that presents one.

use super::{Queue, StoreError, bytes, int_at, text_at};
use crate::keys::UserKey;
use crate::scripts;

/// What Redis keeps of a key.
pub struct StoredKey {
    pub user_id: String,
    /// SHA-256 of the whole key, lowercase hex (`auth::key_digest`).
    pub digest: Vec<u8>,
}

impl Queue<'_> {
    /// The key `key_id` names, if it exists (one command, no script: this runs on every
    /// request under `auth = api_key`).
    pub async fn api_key(&self, key_id: &str) -> Result<Option<StoredKey>, StoreError> {
        let reply = self.execute("HMGET", &[&self.config.keys.api_key(key_id), "u", "h"]).await?;
        match (reply.first().and_then(bytes), reply.get(1).and_then(bytes)) {
            (Some(user), Some(digest)) => {
                Ok(Some(StoredKey { user_id: String::from_utf8_lossy(user).into_owned(), digest: digest.to_vec() }))
            }
            _ => Ok(None),
        }
    }

    /// Stores a new key for `user_id`; returns when it was made (Redis clock, ms).
    pub async fn create_api_key(&self, key_id: &str, user_id: &str, digest: &[u8]) -> Result<i64, StoreError> {
        let keys = &self.config.keys;
        let digest = String::from_utf8_lossy(digest);
        let set = keys.user_api_keys(&UserKey::new(user_id));
        let reply = self.eval(&scripts::KEY_CREATE, &[&keys.api_key(key_id), user_id, &digest, &set, key_id]).await?;
        int_at(&reply, 0)
    }

    /// A user's keys: (key id, created-at), in key id order.
    pub async fn list_api_keys(&self, user_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let reply = self.eval(&scripts::KEY_LIST, &[&self.config.keys.user_api_keys(&UserKey::new(user_id))]).await?;
        (0..reply.len() / 2).map(|i| Ok((text_at(&reply, 2 * i)?, int_at(&reply, 2 * i + 1)?))).collect()
    }

    /// Deletes a key: (its user, when), or `None` if there is no such key.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<Option<(String, i64)>, StoreError> {
        let reply = self.eval(&scripts::KEY_REVOKE, &[&self.config.keys.api_key(key_id), key_id]).await?;
        if reply.is_empty() {
            return Ok(None);
        }
        Ok(Some((text_at(&reply, 0)?, int_at(&reply, 1)?)))
    }
}
