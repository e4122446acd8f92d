//! The drainer's calls (`drain.lua`, `sweep.lua`, the tick, and the keyspace events its second
//! trigger listens to).

use super::*;

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

impl Queue<'_> {
    pub async fn drain(
        &self,
        token: &str,
        handoff: &str,
        lease_ttl_ms: i64,
        batch: i64,
    ) -> Result<Drained, StoreError> {
        let (ttl, batch) = (lease_ttl_ms.to_string(), batch.to_string());
        let reply = self.eval(&scripts::DRAIN, &[token, handoff, &ttl, &batch]).await?;
        parse_drained(&reply)
    }

    /// Wakes the drainer if tasks wait and nobody leads; `healthz` calls this, so a liveness
    /// probe also sweeps up tasks stranded when every drainer was down. Whether it did. It
    /// counts the probe's 200.
    pub async fn sweep(&self) -> Result<bool, StoreError> {
        let reply = self.eval(&scripts::SWEEP, &[]).await?;
        Ok(int_at(&reply, 0)? == 1)
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
        let mut flags = text_at(&reply, 1)?;
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

/// `drain.lua`: `['busy', holder]` or `[state, ms until next due, more due now?, completions…]`.
fn parse_drained(reply: &[RedisResult]) -> Result<Drained, StoreError> {
    let ran = || completions(reply.get(3..).unwrap_or_default());
    match text_at(reply, 0)?.as_str() {
        "busy" => Ok(Drained::Busy { holder: text_at(reply, 1)? }),
        "idle" => Ok(Drained::Idle { ran: ran()? }),
        "active" => {
            Ok(Drained::Active { next_due_in_ms: int_at(reply, 1)?, more_due_now: int_at(reply, 2)? == 1, ran: ran()? })
        }
        other => Err(StoreError::Unexpected(format!("drain answered {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::{completion, text};
    use RedisResult::Int64;

    #[test]
    fn drain_replies() {
        assert!(matches!(parse_drained(&[text("busy"), text("tok")]), Ok(Drained::Busy { holder }) if holder == "tok"));
        let mut reply = vec![text("active"), Int64(12), Int64(1)];
        reply.extend(completion("t1", "bob", 10, 11));
        reply.extend(completion("t2", "eve", 10, 12));
        let Ok(Drained::Active { next_due_in_ms, more_due_now, ran }) = parse_drained(&reply) else {
            panic!("not active")
        };
        assert_eq!((next_due_in_ms, more_due_now, ran.len()), (12, true, 2));
        assert!(
            matches!(parse_drained(&[text("idle"), Int64(0), Int64(0)]), Ok(Drained::Idle { ran }) if ran.is_empty())
        );
        assert!(parse_drained(&[text("active"), Int64(5)]).is_err());
    }
}
