//! The queue, the executor and the log on Redis: the connection, and one call that runs any
//! of the Lua scripts. Every step is one script, so it is atomic across replicas and
//! exactly-once by construction. Each script's contract (its arguments and its reply) is one
//! type of the core (`task_core::scripts`, beside its `.lua`); `Queue::run` sends the shared
//! header and its arguments, and reads its reply whole. The few commands that are not
//! scripts follow it: a user's tier (`SET`/`DEL`), log pages (`XRANGE`), an API key's
//! lookup (`HMGET`, on every request under `auth = api_key`), the drainers' tick (`PUBLISH`)
//! and the keyspace events the drainer's lease and alarm triggers listen to (`CONFIG`).
//!
//! Data: every key is listed, with what it holds, in `task_core::keys` (the one place that
//! builds their names).
//!
//! "Running" a task is `run_due` in `lib.lua`: it takes the user's head task when the slot
//! rule allows it on the user's actual completion times, records the completion, and
//! appends the log entry, all in one script. A replica that dies mid-task
//! therefore either ran it completely or not at all, and a doubled wake-up finds nothing
//! left to run. The clock is the Redis server's `TIME`, the same for every replica.
//!
//! The connection is kept by the instance across the requests Spin gives it (Spin opens a
//! new TCP connection for every `Connection::open`), and dropped after any error so that the
//! next call reconnects. Every call has a deadline of its own: Spin's Redis client has none,
//! and an answer (a 503) is due within 2 s when Redis cannot answer.

mod eval;

pub use task_core::scripts::{
    Admission, AdmitPolicy, Admitted, Cancelled, Completion, Drained, Earlier, Filed, LaneState, LaneView, Overview,
    Placement, Prepared, QueuedTask, TaskRecord, TaskToFile, UserState,
};

use crate::config::Config;
use crate::deadline::with_deadline;
use eval::eval;
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use task_core::scripts::{Call, Cursor, Reply, Unexpected, log_page, read_reply};

/// The longest one Redis call (or connecting) may take before we answer 503. An admission
/// connects at most once and then makes one call (two with the `kv` ledger), so a stuck
/// Redis is reported within 2 s.
const CALL_DEADLINE: Duration = Duration::from_millis(600);

thread_local! {
    /// This instance's connection (address, connection). Spin 4 gives one instance up to
    /// 128 requests, 16 at a time; they share it (Spin's connection is multiplexed).
    static CONNECTION: RefCell<Option<(String, Rc<Connection>)>> = const { RefCell::new(None) };
}

/// A new task id (also the drainer's lease token): 96 bits from the host's random source.
pub fn new_task_id() -> String {
    use spin_sdk::wasip3::random::random::get_random_u64;
    crate::keys::task_id(get_random_u64(), get_random_u64())
}

#[derive(Debug)]
pub enum StoreError {
    /// Redis failed or could not be reached: answer 503.
    Unavailable(String),
    /// Redis answered something this code did not expect: a bug, answer 500.
    Unexpected(String),
}

impl From<Unexpected> for StoreError {
    fn from(e: Unexpected) -> Self {
        StoreError::Unexpected(e.0)
    }
}

pub struct Queue<'a> {
    conn: Rc<Connection>,
    config: &'a Config,
}

impl<'a> Queue<'a> {
    /// The instance's connection to Redis, opened on first use.
    pub async fn connect(config: &'a Config) -> Result<Queue<'a>, StoreError> {
        let address = &config.redis_address;
        let cached = CONNECTION.with_borrow(|c| c.as_ref().filter(|(a, _)| a == address).map(|(_, conn)| conn.clone()));
        if let Some(conn) = cached {
            return Ok(Queue { conn, config });
        }
        let conn = match with_deadline(Connection::open(address), CALL_DEADLINE).await {
            Some(Ok(conn)) => Rc::new(conn),
            Some(Err(e)) => return Err(unavailable(e)),
            None => return Err(StoreError::Unavailable(format!("connecting to Redis took over {CALL_DEADLINE:?}"))),
        };
        CONNECTION.set(Some((address.clone(), conn.clone())));
        Ok(Queue { conn, config })
    }

    /// Runs a script's call: the shared header (ARGV[1..6], `lib.lua`), then its arguments;
    /// its reply read whole.
    pub async fn run<C: Call>(&self, call: &C) -> Result<C::Output, StoreError> {
        let args = call.args();
        let header = self.config.script_header.iter();
        let all: Vec<&str> = header.chain(&args).map(String::as_str).collect();
        let reply = self.call(eval(&self.conn, call.script(), &all)).await?;
        Ok(read_reply(call, &replies(reply))?)
    }

    /// A command that is not a script; its reply as the core reads replies.
    async fn execute(&self, command: &str, args: &[&str]) -> Result<Vec<Reply>, StoreError> {
        let params = args.iter().map(|a| RedisParameter::Binary(a.as_bytes().to_vec()));
        self.call(self.conn.execute(command, params)).await.map(replies)
    }

    /// One Redis call under the deadline. After a failure the instance's connection may be
    /// broken or carry a late reply, so it is dropped and the next call opens a new one.
    async fn call<T>(&self, call: impl Future<Output = Result<T, spin_sdk::redis::Error>>) -> Result<T, StoreError> {
        let error = match with_deadline(call, CALL_DEADLINE).await {
            Some(Ok(value)) => return Ok(value),
            Some(Err(e)) => unavailable(e),
            None => StoreError::Unavailable(format!("Redis did not answer within {CALL_DEADLINE:?}")),
        };
        CONNECTION.with_borrow_mut(|c| {
            if c.as_ref().is_some_and(|(_, conn)| Rc::ptr_eq(conn, &self.conn)) {
                *c = None;
            }
        });
        Err(error)
    }
}

/// What Redis keeps of an API key.
pub struct StoredKey {
    /// The key's user ('' for a worker key).
    pub user_id: String,
    /// SHA-256 of the whole key, lowercase hex (`auth::key_digest`).
    pub digest: Vec<u8>,
    /// A worker key's kinds (`None` for a user's key).
    pub worker_kinds: Option<Vec<String>>,
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
        let reply = self.execute("HMGET", &[&self.config.keys.api_key(key_id), "u", "h", "k"]).await?;
        let mut reply = Cursor::new(&reply);
        let (user, digest, kinds) = (reply.optional()?, reply.optional()?, reply.optional()?);
        reply.finish()?;
        Ok(user.zip(digest).map(|(user, digest)| StoredKey {
            user_id: String::from_utf8_lossy(user).into_owned(),
            digest: digest.to_vec(),
            worker_kinds: kinds.map(|k| String::from_utf8_lossy(k).split(',').map(str::to_string).collect()),
        }))
    }

    /// Waits up to `limit` for `kind`'s bell to ring (a worker's long poll: `file_pulled` in
    /// lib.lua rings it when the kind's soonest lane changes). `BLPOP` blocks the connection
    /// it is sent on, so it gets one of its own, closed after; our timer, started before the
    /// connection is opened, decides when the wait ends (Redis's own timeout only bounds a
    /// command left behind). Whether it rang; a failure waits out the rest of a short pause
    /// instead, so a caller's loop never spins.
    pub async fn wait_for_bell(&self, kind: &str, limit: Duration) -> bool {
        const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);
        let server_timeout = format!("{:.3}", (limit + Duration::from_secs(1)).as_secs_f64());
        let params = [self.config.keys.bell(kind), server_timeout].map(|a| RedisParameter::Binary(a.into_bytes()));
        let began = std::time::Instant::now();
        let ring = async {
            let conn = Connection::open(&self.config.redis_address).await?;
            conn.execute("BLPOP", params).await
        };
        match with_deadline(ring, limit).await {
            Some(Ok(reply)) => reply.first().is_some_and(|item| !matches!(item, RedisResult::Nil)),
            Some(Err(_)) => {
                spin_sdk::time::sleep(limit.min(PAUSE_AFTER_ERROR).saturating_sub(began.elapsed())).await;
                false
            }
            None => false,
        }
    }

    /// Wakes the drainer on every replica; `handoff` lets the receiver take over our lease.
    pub async fn publish_tick(&self, handoff: &str) -> Result<(), StoreError> {
        let publish = self.conn.publish(self.config.keys.tick_channel(), handoff.as_bytes());
        self.call(publish).await
    }

    /// Switches on the keyspace notifications the drainer's other triggers listen to (the
    /// lease and the alarms expiring), keeping whatever flags are already set. Managed Redis
    /// services may refuse CONFIG; the drainer then relies on standbys and requests alone.
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

fn unavailable(e: spin_sdk::redis::Error) -> StoreError {
    StoreError::Unavailable(format!("redis: {e:?}"))
}

/// Spin's reply items as the core's.
fn replies(reply: Vec<RedisResult>) -> Vec<Reply> {
    reply
        .into_iter()
        .map(|item| match item {
            RedisResult::Nil => Reply::Nil,
            RedisResult::Int64(n) => Reply::Int(n),
            RedisResult::Binary(b) => Reply::Bytes(b),
            RedisResult::Status(s) => Reply::Status(s),
        })
        .collect()
}
