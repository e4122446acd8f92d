//! The queue, the executor and the log on Redis: one typed call per Lua script
//! (`src/scripts/*.lua`, loaded by `scripts.rs`), each building its arguments and parsing
//! its reply. Every step is one script, so it is atomic across replicas and exactly-once by
//! construction.
//!
//! Data (all under the `key_prefix`; `<u>` is the encoded user id and `<l>` a lane, the
//! user's tasks of one kind, see `keys.rs`):
//! - `ledger:<l>` the lane's recent slots and costs (`ledger.rs`), in Redis or the key-value
//!   store;
//! - `q:<l>`    list of the lane's pending tasks, `"<slot>:<task id>"`, in slot order;
//! - `due`      sorted set: lane → earliest instant its head task may start;
//! - `done:<l>` list of the lane's last completion times (`<ms>`, or `<ms>*<units>` for a
//!   weighted task; expires when the longest window has passed the last);
//! - `t:<id>`   hash of a task: `u` user id, `s` slot, `p` payload (JSON text, if any),
//!   `k` kind, `w` cost and `l` policy (each only when not the default), `c` completed-at or
//!   `x` cancelled-at (kept a day once either is set);
//! - `idem:<u>:<key>` the task an Idempotency-Key names;
//! - `tier:<u>` the user's tier (absent: the built-in one);
//! - `lease`    the drainer lease (see `drainer.rs`); `kick` rate-limits wake-ups; `tick`
//!   is the drainers' channel;
//! - `metrics`  hash of the counters behind `/metrics` (see `metrics.rs`);
//! - `apikey:<id>` hash of an API key (`u` user id, `h` SHA-256 of the key, `c` created-at,
//!   `s` the user's set) and `apikeys:<u>` the set of a user's key ids (`auth.rs`).
//!
//! "Running" a task is `run_due` in `lib.lua`: it takes the user's head task when the slot
//! rule allows it on the user's actual completion times, records the completion, and
//! appends the log entry (SPEC §3), all in one script. A replica that dies mid-task
//! therefore either ran it completely or not at all, and a doubled wake-up finds nothing
//! left to run. The clock is the Redis server's `TIME`, the same for every replica (SPEC §1).
//!
//! The connection is kept by the instance across the requests Spin gives it (Spin opens a
//! new TCP connection for every `Connection::open`), and dropped after any error so that the
//! next call reconnects. Every call has a deadline of its own: Spin's Redis client has none,
//! and SPEC §5 wants a 503 within 2 s when Redis cannot answer.

//!
//! The calls are grouped by what they serve, each file with its reply parsers beside its
//! calls: `admission` (admitting, filing, withdrawing tasks and setting tiers), `execution`
//! (the drainer's calls), `reads` (what the API shows: task records, one user's state,
//! the log, the overview, the metrics) and `api_keys` (the keys of `auth = api_key`).

mod admission;
mod api_keys;
mod eval;
mod execution;
mod reads;

pub use admission::{Admission, AdmitPolicy, Cancelled, Earlier, Filed, Prepared, TaskToFile};
pub use execution::Drained;
pub use reads::{LaneState, LaneView, Overview, QueuedTask, TaskRecord, UserState};

use crate::config::Config;
use crate::deadline::with_deadline;
use crate::keys::LaneKey;
use crate::policy::DEFAULT_KIND;
use crate::scripts::{self, Script};
use eval::eval;
use crate::slot::Spent;
use serde_json::value::RawValue;
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Completed task records are kept this long for `GET /api/v1/task/{id}`.
pub const TASK_TTL_MS: i64 = 24 * 3_600_000;

/// The longest one Redis call (or connecting) may take before we answer 503. An admission
/// connects at most once and then makes one call (two with the `kv` ledger), so a stuck
/// Redis is reported within SPEC §5's 2 s.
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

/// A completed task, as it appears in the log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Completion {
    pub task_id: String,
    pub user_id: String,
    pub slot: i64,
    pub completed_at: i64,
    pub kind: String,
    pub cost: u32,
    /// The windows the task ran under (`Policy::spec`). Only read back from the log stream
    /// (entries from before policies existed have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The task's payload, as sent. Only read back from the log stream: the scripts that run
    /// tasks leave it out of their replies (the seed-format line does not show it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
}

impl Completion {
    /// The seed-format log line. Control characters in user ids are escaped so that one
    /// completion is always one line; the NDJSON log carries the exact id.
    pub fn line(&self) -> String {
        let user: String = self
            .user_id
            .chars()
            .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
            .collect();
        format!("{user}-task completed at-{}", self.completed_at)
    }
}

/// What became of an admitted task.
pub enum Placement {
    Completed {
        completed_at: i64,
    },
    Queued {
        position: i64,
    },
    /// Only ever found by a replayed request: a new task is never cancelled.
    Cancelled {
        cancelled_at: i64,
    },
}

/// A filed task (the reply of ADMIT and POKE).
pub struct Admitted {
    pub placement: Placement,
    /// The Redis clock when the script ran.
    pub now: i64,
    /// Tasks this call ran (ours, or the user's overdue ones).
    pub ran: Vec<Completion>,
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

    /// Runs a script with the shared header (ARGV[1..6], `lib.lua`) before `args`.
    async fn eval(&self, script: &Script, args: &[&str]) -> Result<Vec<RedisResult>, StoreError> {
        let header = &self.config.script_header;
        let all: Vec<&str> = header.iter().map(String::as_str).chain(args.iter().copied()).collect();
        self.call(eval(&self.conn, script, &all)).await
    }

    async fn execute(&self, command: &str, args: &[&str]) -> Result<Vec<RedisResult>, StoreError> {
        let params = args.iter().map(|a| RedisParameter::Binary(a.as_bytes().to_vec()));
        self.call(self.conn.execute(command, params)).await
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

fn unavailable(e: spin_sdk::redis::Error) -> StoreError {
    StoreError::Unavailable(format!("redis: {e:?}"))
}

fn bytes(v: &RedisResult) -> Option<&[u8]> {
    match v {
        RedisResult::Binary(b) => Some(b),
        RedisResult::Status(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn parse_int(b: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Unexpected(format!("not an integer: {:?}", String::from_utf8_lossy(b))))
}

fn int_at(reply: &[RedisResult], i: usize) -> Result<i64, StoreError> {
    match reply.get(i) {
        Some(RedisResult::Int64(n)) => Ok(*n),
        Some(other) => {
            bytes(other).map(parse_int).unwrap_or_else(|| Err(StoreError::Unexpected(format!("item {i}: {other:?}"))))
        }
        None => Err(StoreError::Unexpected(format!("reply too short for item {i}"))),
    }
}

fn text_at(reply: &[RedisResult], i: usize) -> Result<String, StoreError> {
    reply
        .get(i)
        .and_then(bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .ok_or_else(|| StoreError::Unexpected(format!("item {i} is not text")))
}

/// In a flattened reply, a count at `*at` followed by that many groups of `width` items:
/// the groups, with `*at` moved past them.
fn groups<'r>(reply: &'r [RedisResult], at: &mut usize, width: usize) -> Result<&'r [RedisResult], StoreError> {
    let count =
        usize::try_from(int_at(reply, *at)?).map_err(|_| StoreError::Unexpected("negative count".to_string()))?;
    let start = *at + 1;
    *at = start + count * width;
    reply.get(start..*at).ok_or_else(|| StoreError::Unexpected("reply too short".to_string()))
}

fn completions(items: &[RedisResult]) -> Result<Vec<Completion>, StoreError> {
    if !items.len().is_multiple_of(4) {
        return Err(StoreError::Unexpected(format!("{} items do not make whole completions", items.len())));
    }
    items.chunks(4).map(completion).collect()
}

/// `task id, user id, slot, completed_at` (the scripts that run tasks report no more: the
/// seed-format line and the answers need no more).
fn completion(c: &[RedisResult]) -> Result<Completion, StoreError> {
    Ok(Completion {
        task_id: text_at(c, 0)?,
        user_id: text_at(c, 1)?,
        slot: int_at(c, 2)?,
        completed_at: int_at(c, 3)?,
        kind: DEFAULT_KIND.to_string(),
        cost: 1,
        policy: None,
        payload: None,
    })
}

/// A cost as stored (absent: 1).
fn cost(b: Option<&[u8]>) -> Result<u32, StoreError> {
    match b {
        None => Ok(1),
        Some(b) => u32::try_from(parse_int(b)?)
            .map_err(|_| StoreError::Unexpected("a stored cost is out of range".to_string())),
    }
}

/// A kind as stored (absent: the default one).
fn kind(b: Option<&[u8]>) -> String {
    b.map_or_else(|| DEFAULT_KIND.to_string(), |b| String::from_utf8_lossy(b).into_owned())
}

/// A completion-history entry: `<ms>`, or `<ms>*<units>`.
fn spent(v: &RedisResult) -> Result<Spent, StoreError> {
    let text = bytes(v).ok_or_else(|| StoreError::Unexpected(format!("a completion time is {v:?}")))?;
    match text.iter().position(|&b| b == b'*') {
        None => Ok((parse_int(text)?, 1)),
        Some(star) => Ok((parse_int(&text[..star])?, cost(Some(&text[star + 1..]))?)),
    }
}

/// A stored payload: its JSON text, or nothing for none (JSON text is never empty).
fn payload(text: Option<&[u8]>) -> Result<Option<Box<RawValue>>, StoreError> {
    match text {
        None | Some(b"") => Ok(None),
        Some(text) => String::from_utf8(text.to_vec())
            .ok()
            .and_then(|text| RawValue::from_string(text).ok())
            .map(Some)
            .ok_or_else(|| StoreError::Unexpected("a stored payload is not JSON".to_string())),
    }
}

/// A tier in a reply: '' for the built-in one.
fn tier_at(reply: &[RedisResult], i: usize) -> Result<Option<String>, StoreError> {
    Ok(Some(text_at(reply, i)?).filter(|t| !t.is_empty()))
}

/// A ledger in a reply: its presence flag at `i`, its value after it.
fn ledger_at(reply: &[RedisResult], i: usize) -> Result<Option<Vec<u8>>, StoreError> {
    match int_at(reply, i)? {
        1 => ledger_text(reply, i + 1).map(Some),
        _ => Ok(None),
    }
}

fn ledger_text(reply: &[RedisResult], i: usize) -> Result<Vec<u8>, StoreError> {
    reply
        .get(i)
        .and_then(bytes)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| StoreError::Unexpected("ledger is not text".to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    //! Reply builders for the parsers' tests in each file.
    use super::*;
    use RedisResult::{Binary, Int64};

    pub fn text(s: &str) -> RedisResult {
        Binary(s.as_bytes().to_vec())
    }

    pub fn completion(id: &str, user: &str, slot: i64, at: i64) -> [RedisResult; 4] {
        [text(id), text(user), Int64(slot), text(&at.to_string())]
    }
}
