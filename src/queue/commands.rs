//! The commands that are not scripts: a user's tier (`SET`/`DEL`), log pages (`XRANGE`),
//! an API key's lookup (`HMGET`, on every request under `auth = api_key`), the drainers'
//! tick (`PUBLISH`) and the keyspace events the drainer's second trigger listens to
//! (`CONFIG`).

use super::{Completion, Queue, StoreError};
use task_core::scripts::{Cursor, log_page};

/// What Redis keeps of an API key.
pub struct StoredKey {
    pub user_id: String,
    /// SHA-256 of the whole key, lowercase hex (`auth::key_digest`).
    pub digest: Vec<u8>,
}

impl Queue<'_> {
    /// Sets the user's tier (at `tier_key`; `None`: back to the built-in one).
    pub async fn set_tier(&self, tier_key: &str, tier: Option<&str>) -> Result<(), StoreError> {
        match tier {
            Some(tier) => self.execute("SET", &[tier_key, tier]).await.map(|_| ()),
            None => self.execute("DEL", &[tier_key]).await.map(|_| ()),
        }
    }

    /// Up to `limit` log entries after the stream id `after` (exclusive), oldest first,
    /// each with its stream id (the paging cursor).
    pub async fn log_page(&self, after: Option<&str>, limit: u32) -> Result<Vec<(String, Completion)>, StoreError> {
        let start = after.map(|c| format!("({c}")).unwrap_or_else(|| "-".to_string());
        let count = limit.to_string();
        let reply = self.execute("XRANGE", &[self.config.keys.log(), &start, "+", "COUNT", &count]).await?;
        Ok(log_page(&reply)?)
    }

    /// The key `key_id` names, if it exists (one command, no script: this runs on every
    /// request under `auth = api_key`).
    pub async fn api_key(&self, key_id: &str) -> Result<Option<StoredKey>, StoreError> {
        let reply = self.execute("HMGET", &[&self.config.keys.api_key(key_id), "u", "h"]).await?;
        let mut reply = Cursor::new(&reply);
        let (user, digest) = (reply.optional()?, reply.optional()?);
        reply.finish()?;
        Ok(user.zip(digest).map(|(user, digest)| StoredKey {
            user_id: String::from_utf8_lossy(user).into_owned(),
            digest: digest.to_vec(),
        }))
    }

    /// Wakes the drainer on every replica; `handoff` lets the receiver take over our lease.
    pub async fn publish_tick(&self, handoff: &str) -> Result<(), StoreError> {
        let publish = self.conn.publish(self.config.keys.tick_channel(), handoff.as_bytes());
        self.call(publish).await
    }

    /// Switches on the keyspace notification the drainer's second trigger listens to (the
    /// lease expiring), keeping whatever flags are already set. Managed Redis services may
    /// refuse CONFIG; the drainer then relies on standbys and `/healthz` alone.
    pub async fn enable_expiry_events(&self) -> Result<(), StoreError> {
        let reply = self.execute("CONFIG", &["GET", "notify-keyspace-events"]).await?;
        // `[name, flags]`.
        let mut reply = Cursor::new(&reply);
        reply.bytes()?;
        let mut flags = reply.text()?;
        reply.finish()?;
        let missing_keyspace = !flags.contains('K');
        let missing_expired = !(flags.contains('x') || flags.contains('A'));
        if missing_keyspace || missing_expired {
            if missing_keyspace {
                flags.push('K');
            }
            if missing_expired {
                flags.push('x');
            }
            self.execute("CONFIG", &["SET", "notify-keyspace-events", &flags]).await?;
        }
        Ok(())
    }
}
