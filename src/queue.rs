//! The queue, the executor and the log on Redis: one typed call per Lua script
//! (`src/scripts/*.lua`, loaded by `scripts.rs`), each building its arguments and parsing
//! its reply. Every step is one script, so it is atomic across replicas and exactly-once by
//! construction.
//!
//! Data (all under the `key_prefix`; `<u>` is the encoded user id, see `keys.rs`):
//! - `ledger:<u>` the user's recent slots (`ledger.rs`), in Redis or the key-value store;
//! - `q:<u>`    list of the user's pending tasks, `"<slot>:<task id>"`, in slot order;
//! - `due`      sorted set: user → earliest instant their head task may start;
//! - `done:<u>` list of the user's last completion times (expires a minute after the last);
//! - `t:<id>`   hash of a task: `u` user id, `s` slot, `p` payload (JSON text, if any),
//!   `c` completed-at or `x` cancelled-at (kept a day once either is set);
//! - `idem:<u>:<key>` the task an Idempotency-Key names;
//! - `lease`    the drainer lease (see `drainer.rs`); `kick` rate-limits wake-ups; `tick`
//!   is the drainers' channel;
//! - `metrics`  hash of the counters behind `/metrics` (see `metrics.rs`).
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

use crate::config::Config;
use crate::deadline::with_deadline;
use crate::keys::UserKey;
use crate::scripts::{self, Script};
use crate::slot::{MINUTE_MS, SECOND_MS};
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Completed task records are kept this long for `GET /api/v1/task/{id}`.
const TASK_TTL_MS: i64 = 24 * 3_600_000;

/// The longest one Redis call (or connecting) may take before we answer 503. An admission
/// connects at most once and then makes one call (two with the `kv` ledger), so a stuck
/// Redis is reported within SPEC §5's 2 s.
const CALL_DEADLINE: Duration = Duration::from_millis(600);

thread_local! {
    /// This instance's connection (address, connection). Spin 4 gives one instance up to
    /// 128 requests, 16 at a time; they share it (Spin's connection is multiplexed).
    static CONNECTION: RefCell<Option<(String, Rc<Connection>)>> = const { RefCell::new(None) };
}

/// Upper bounds of the lateness histogram buckets (ms), for the scripts and `/metrics`.
pub const LATENESS_BUCKETS_MS: [i64; 10] = [1, 2, 5, 10, 20, 50, 100, 250, 1_000, 5_000];

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
    /// The task's payload, as sent. Only read back from the log stream: the scripts that run
    /// tasks leave it out of their replies (the seed-format line does not show it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
}

impl Completion {
    /// The seed-format log line. Control characters in user ids are escaped so that one
    /// completion is always one line; the NDJSON log carries the exact id.
    pub fn line(&self) -> String {
        let user: String = self.user_id.chars().flat_map(|c| {
            if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }
        }).collect();
        format!("{user}-task completed at-{}", self.completed_at)
    }
}

/// What `prepare` found.
pub struct Prepared {
    pub now: i64,
    /// The user's queue holds `max_backlog` tasks (nothing was reserved).
    pub backlog_full: bool,
    pub earlier: Earlier,
}

/// What `admit` (the whole admission with the `redis` ledger) did.
pub enum Admission {
    /// The Idempotency-Key was used before: what it names, the Redis clock, and the user's
    /// ledger as stored.
    Earlier { earlier: Earlier, now: i64, ledger: Option<Vec<u8>> },
    /// The user's queue holds `max_backlog` tasks: nothing was stored.
    BacklogFull,
    /// The task was stored at `slot` (and run, if its slot was now); `ledger` is the user's
    /// ledger after it.
    Admitted { slot: i64, ledger: Vec<u8>, filed: Admitted },
}

/// What an earlier request with the same Idempotency-Key left.
pub enum Earlier {
    None,
    /// That request is still being admitted.
    Pending,
    Task(String),
}

/// What became of an admitted task.
pub enum Placement {
    Completed { completed_at: i64 },
    Queued { position: i64 },
    /// Only ever found by a replayed request: a new task is never cancelled.
    Cancelled { cancelled_at: i64 },
}

/// A filed task (the reply of ADMIT and POKE).
pub struct Admitted {
    pub placement: Placement,
    /// The Redis clock when the script ran.
    pub now: i64,
    /// Tasks this call ran (ours, or the user's overdue ones).
    pub ran: Vec<Completion>,
}

pub enum Drained {
    /// Another drainer holds the lease (its token).
    Busy { holder: String },
    /// Nothing is queued; the lease was dropped.
    Idle { ran: Vec<Completion> },
    Active { next_due_in_ms: i64, more_due_now: bool, ran: Vec<Completion> },
}

/// A bounded snapshot of the queue and the log for the page (`GET /api/v1/overview`).
pub struct Overview {
    pub now: i64,
    pub queued_tasks: i64,
    pub waiting_users: i64,
    /// The users whose next task may start soonest: (user id, tasks queued, when).
    pub next_due: Vec<(String, i64, i64)>,
    /// The newest completions, newest first.
    pub recent: Vec<Completion>,
    /// The asked-for user's queued tasks (task id, slot, payload) in run order, and last
    /// completions.
    pub user_queued: Vec<(String, i64, Option<Box<RawValue>>)>,
    pub user_completed: Vec<i64>,
}

/// A task record for `GET /api/v1/task/{id}`.
pub struct TaskRecord {
    pub user_id: String,
    pub slot: i64,
    pub completed_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub payload: Option<Box<RawValue>>,
}

/// What `DELETE /api/v1/task/{id}` found (`cancel.lua`).
pub enum Cancelled {
    /// Cancelled now, or by an earlier request, at this instant.
    Cancelled { at: i64 },
    /// It had already run.
    Completed { at: i64 },
    Unknown,
}

/// One user's state (`user_state.lua`).
pub struct UserState {
    pub now: i64,
    pub queued: i64,
    /// The task that runs next: (task id, slot).
    pub next_task: Option<(String, i64)>,
    /// The ledger as stored in Redis (when asked for and present).
    pub ledger: Option<Vec<u8>>,
    /// The user's last completion times, oldest first.
    pub recent_completions: Vec<i64>,
}

pub struct Queue<'a> {
    conn: Rc<Connection>,
    config: &'a Config,
}

/// A task to file: its id, its committed slot, the Idempotency-Key record that will name
/// it, and its payload (JSON text).
pub struct TaskToFile {
    pub task_id: String,
    pub slot: i64,
    pub idempotency_key: Option<String>,
    pub payload: Option<Rc<str>>,
}

/// What `file_tasks` (lib.lua) did: one placement per task, in the order given.
pub struct Filed {
    pub placements: Vec<Placement>,
    /// The Redis clock when the script ran.
    pub now: i64,
    /// Tasks the call ran (ours, or the user's overdue ones).
    pub ran: Vec<Completion>,
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

    /// Reads what an admission with the `kv` ledger starts from (`prepare.lua`).
    pub async fn prepare(&self, user: &UserKey, idem: Option<&str>) -> Result<Prepared, StoreError> {
        let max_backlog = self.config.max_backlog.to_string();
        let reply = self.eval(&scripts::PREPARE, &[&user.0, idem.unwrap_or(""), &max_backlog]).await?;
        parse_prepared(&reply)
    }

    /// The whole admission of one task with the `redis` ledger (`admit.lua`). `tag` marks
    /// the task's ledger entry; `idem` is the Idempotency-Key record's key.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        &self,
        user: &UserKey,
        user_id: &str,
        ledger_key: &str,
        idem: Option<&str>,
        task_id: &str,
        tag: &str,
        payload: Option<&str>,
    ) -> Result<Admission, StoreError> {
        let max_backlog = self.config.max_backlog.to_string();
        let args = [&user.0, user_id, ledger_key, idem.unwrap_or(""), &max_backlog, task_id, tag, payload.unwrap_or("")];
        let reply = self.eval(&scripts::ADMIT, &args).await?;
        parse_admission(&reply)
    }

    /// Drops an idempotency reservation when admission did not get as far as storing a task.
    pub async fn release(&self, idem: &str) -> Result<(), StoreError> {
        self.eval(&scripts::RELEASE, &[idem]).await.map(|_| ())
    }

    /// The task's 1-based place in its user's queue, 0 if it is not queued.
    pub async fn position(&self, user: &UserKey, task_id: &str) -> Result<i64, StoreError> {
        let reply = self.eval(&scripts::POSITION, &[&user.0, task_id]).await?;
        int_at(&reply, 0)
    }

    /// Files tasks of one user whose slots the `kv` ledger committed (`file.lua`).
    pub async fn file(&self, user: &UserKey, user_id: &str, ledger_key: &str, tasks: &[TaskToFile], cas_retries: u32) -> Result<Filed, StoreError> {
        let last_slot = tasks.iter().map(|t| t.slot).max().unwrap_or(0);
        // Once the last slot is a minute old the ledger no longer constrains anything.
        let expire_at = (last_slot + MINUTE_MS + SECOND_MS).to_string();
        let retries = cas_retries.to_string();
        let slots: Vec<String> = tasks.iter().map(|t| t.slot.to_string()).collect();
        let mut args: Vec<&str> = vec![&user.0, user_id, ledger_key, &expire_at, &retries];
        for (task, slot) in tasks.iter().zip(&slots) {
            let (idem, payload) = (task.idempotency_key.as_deref(), task.payload.as_deref());
            args.extend([task.task_id.as_str(), slot.as_str(), idem.unwrap_or(""), payload.unwrap_or("")]);
        }
        let reply = self.eval(&scripts::FILE, &args).await?;
        parse_filed(&reply, tasks.len())
    }

    /// Runs the user's due head tasks now (`poke.lua`); `task_id`'s placement afterwards.
    pub async fn poke(&self, user: &UserKey, task_id: &str) -> Result<Admitted, StoreError> {
        let reply = self.eval(&scripts::POKE, &[&user.0, task_id]).await?;
        parse_poked(&reply)
    }

    pub async fn drain(&self, token: &str, handoff: &str, lease_ttl_ms: i64, batch: i64) -> Result<Drained, StoreError> {
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

    /// A task's record (`read_task.lua`).
    pub async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        parse_task(&self.eval(&scripts::READ_TASK, &[task_id, "0"]).await?)
    }

    /// The task's record for an answer to `GET /api/v1/task/{id}` (`read_task.lua`), which
    /// counts that answer (200, or 404 for `None`).
    pub async fn read_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        parse_task(&self.eval(&scripts::READ_TASK, &[task_id, "1"]).await?)
    }

    /// Cancels a queued task of `user` (`cancel.lua`).
    pub async fn cancel(&self, user: &UserKey, task_id: &str) -> Result<Cancelled, StoreError> {
        let reply = self.eval(&scripts::CANCEL, &[&user.0, task_id]).await?;
        let at = int_at(&reply, 1)?;
        match text_at(&reply, 0)?.as_str() {
            "cancelled" => Ok(Cancelled::Cancelled { at }),
            "completed" => Ok(Cancelled::Completed { at }),
            "unknown" => Ok(Cancelled::Unknown),
            other => Err(StoreError::Unexpected(format!("cancel answered {other:?} for task {task_id}"))),
        }
    }

    /// One user's state; `ledger_key` is `None` when the ledger lives in the key-value store.
    pub async fn user_state(&self, user: &UserKey, ledger_key: Option<&str>) -> Result<UserState, StoreError> {
        let reply = self.eval(&scripts::USER_STATE, &[&user.0, ledger_key.unwrap_or("")]).await?;
        parse_user_state(&reply)
    }

    /// Up to `limit` log entries after the stream id `after` (exclusive), oldest first,
    /// each with its stream id (the paging cursor).
    pub async fn log_page(&self, after: Option<&str>, limit: u32) -> Result<Vec<(String, Completion)>, StoreError> {
        let start = after.map(|c| format!("({c}")).unwrap_or_else(|| "-".to_string());
        let count = limit.to_string();
        let reply = self.execute("XRANGE", &[self.config.keys.log(), &start, "+", "COUNT", &count]).await?;
        parse_log_page(&reply)
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

    /// Every counter of the metrics hash, and the number of users with queued tasks.
    pub async fn metrics(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let reply = self.eval(&scripts::METRICS, &[]).await?;
        reply.chunks(2).map(|pair| Ok((text_at(pair, 0)?, int_at(pair, 1)?))).collect()
    }

    /// Counts an HTTP answer that no script counted.
    pub async fn count_status(&self, status: u16) -> Result<(), StoreError> {
        self.eval(&scripts::COUNT_STATUS, &[&status.to_string()]).await.map(|_| ())
    }

    pub async fn overview(&self, user: Option<&UserKey>, soonest: usize, recent: usize, queued: usize) -> Result<Overview, StoreError> {
        let member = user.map(|u| u.0.as_str()).unwrap_or("");
        let (soonest, recent, queued) = (soonest.to_string(), recent.to_string(), queued.to_string());
        let reply = self.eval(&scripts::OVERVIEW, &[member, &soonest, &recent, &queued]).await?;
        parse_overview(&reply)
    }

    /// Runs a script with the shared header (ARGV[1..7], `lib.lua`) before `args`.
    async fn eval(&self, script: &Script, args: &[&str]) -> Result<Vec<RedisResult>, StoreError> {
        let limits = self.config.limits;
        let header = [
            self.config.keys.prefix().to_string(),
            self.config.keys.log().to_string(),
            limits.per_second.to_string(),
            limits.per_minute.to_string(),
            TASK_TTL_MS.to_string(),
            SECOND_MS.to_string(),
            MINUTE_MS.to_string(),
        ];
        let all: Vec<&str> = header.iter().map(String::as_str).chain(args.iter().copied()).collect();
        self.call(scripts::eval(&self.conn, script, &all)).await
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
        Some(other) => bytes(other).map(parse_int).unwrap_or_else(|| Err(StoreError::Unexpected(format!("item {i}: {other:?}")))),
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
    let count = usize::try_from(int_at(reply, *at)?).map_err(|_| StoreError::Unexpected("negative count".to_string()))?;
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

/// `task id, user id, slot, completed_at`.
fn completion(c: &[RedisResult]) -> Result<Completion, StoreError> {
    Ok(Completion { task_id: text_at(c, 0)?, user_id: text_at(c, 1)?, slot: int_at(c, 2)?, completed_at: int_at(c, 3)?, payload: None })
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

/// What an earlier request with the same Idempotency-Key left: '' (nothing), 'pending', or
/// its task id.
fn earlier(text: &str) -> Earlier {
    match text {
        "" => Earlier::None,
        "pending" => Earlier::Pending,
        task_id => Earlier::Task(task_id.to_string()),
    }
}

/// `prepare.lua`: `[now, backlog full (0/1), earlier]`.
fn parse_prepared(reply: &[RedisResult]) -> Result<Prepared, StoreError> {
    Ok(Prepared { now: int_at(reply, 0)?, backlog_full: int_at(reply, 1)? == 1, earlier: earlier(&text_at(reply, 2)?) })
}

/// A ledger in a reply: its presence flag at `i`, its value after it.
fn ledger_at(reply: &[RedisResult], i: usize) -> Result<Option<Vec<u8>>, StoreError> {
    match int_at(reply, i)? {
        1 => ledger_text(reply, i + 1).map(Some),
        _ => Ok(None),
    }
}

fn ledger_text(reply: &[RedisResult], i: usize) -> Result<Vec<u8>, StoreError> {
    reply.get(i).and_then(bytes).map(<[u8]>::to_vec).ok_or_else(|| StoreError::Unexpected("ledger is not text".to_string()))
}

/// `admit.lua`: `['earlier', now, earlier, ledger present, ledger]`, `['full', now]`,
/// `['corrupt', ledger]` or `['admitted', slot, ledger, <file_tasks reply>…]`.
fn parse_admission(reply: &[RedisResult]) -> Result<Admission, StoreError> {
    match text_at(reply, 0)?.as_str() {
        "earlier" => Ok(Admission::Earlier { earlier: earlier(&text_at(reply, 2)?), now: int_at(reply, 1)?, ledger: ledger_at(reply, 3)? }),
        "full" => Ok(Admission::BacklogFull),
        "corrupt" => Err(StoreError::Unexpected(format!("the ledger holds a foreign value {:?}", text_at(reply, 1)?))),
        "admitted" => {
            let mut filed = parse_filed(reply.get(3..).unwrap_or_default(), 1)?;
            let placement = filed.placements.pop().ok_or_else(|| StoreError::Unexpected("admit placed no task".to_string()))?;
            Ok(Admission::Admitted { slot: int_at(reply, 1)?, ledger: ledger_text(reply, 2)?, filed: Admitted { placement, now: filed.now, ran: filed.ran } })
        }
        other => Err(StoreError::Unexpected(format!("admit answered {other:?}"))),
    }
}

/// `file_tasks` (lib.lua): `['filed', now, k, (status, completed_at | position)×k,
/// completions…]`.
fn parse_filed(reply: &[RedisResult], tasks: usize) -> Result<Filed, StoreError> {
    match text_at(reply, 0)?.as_str() {
        "filed" => {}
        other => return Err(StoreError::Unexpected(format!("filing answered {other:?}"))),
    }
    let count = int_at(reply, 2)?;
    if count != tasks as i64 {
        return Err(StoreError::Unexpected(format!("filed {count} tasks of {tasks}")));
    }
    let placements = (0..tasks).map(|i| placement(reply.get(3 + 2 * i..).unwrap_or_default())).collect::<Result<_, _>>()?;
    let ran = completions(reply.get(3 + 2 * tasks..).unwrap_or_default())?;
    Ok(Filed { placements, now: int_at(reply, 1)?, ran })
}

/// A `(status, completed_at | position)` pair.
fn placement(pair: &[RedisResult]) -> Result<Placement, StoreError> {
    let value = int_at(pair, 1)?;
    match text_at(pair, 0)?.as_str() {
        "completed" => Ok(Placement::Completed { completed_at: value }),
        "queued" => Ok(Placement::Queued { position: value }),
        other => Err(StoreError::Unexpected(format!("placement {other:?}"))),
    }
}

/// `poke.lua`: `[status, completed_at | position, now, completions…]`.
fn parse_poked(reply: &[RedisResult]) -> Result<Admitted, StoreError> {
    Ok(Admitted { placement: placement(reply)?, now: int_at(reply, 2)?, ran: completions(reply.get(3..).unwrap_or_default())? })
}

/// `drain.lua`: `['busy', holder]` or `[state, ms until next due, more due now?, completions…]`.
fn parse_drained(reply: &[RedisResult]) -> Result<Drained, StoreError> {
    let ran = || completions(reply.get(3..).unwrap_or_default());
    match text_at(reply, 0)?.as_str() {
        "busy" => Ok(Drained::Busy { holder: text_at(reply, 1)? }),
        "idle" => Ok(Drained::Idle { ran: ran()? }),
        "active" => Ok(Drained::Active { next_due_in_ms: int_at(reply, 1)?, more_due_now: int_at(reply, 2)? == 1, ran: ran()? }),
        other => Err(StoreError::Unexpected(format!("drain answered {other:?}"))),
    }
}

/// `read_task.lua`: `HMGET t:<id> u s c x p`.
fn parse_task(reply: &[RedisResult]) -> Result<Option<TaskRecord>, StoreError> {
    let field = |i: usize| reply.get(i).and_then(bytes);
    let (Some(user), Some(slot)) = (field(0), field(1)) else {
        return Ok(None);
    };
    Ok(Some(TaskRecord {
        user_id: String::from_utf8_lossy(user).into_owned(),
        slot: parse_int(slot)?,
        completed_at: field(2).map(parse_int).transpose()?,
        cancelled_at: field(3).map(parse_int).transpose()?,
        payload: payload(field(4))?,
    }))
}

/// The fields a log entry can have (`run_due` in `lib.lua`).
const LOG_FIELDS: [&str; 5] = ["task_id", "user_id", "slot", "completed_at", "payload"];

/// `XRANGE`, flattened by the host: each entry is its id, then its field/value pairs: four,
/// or five with a payload. Entries are told apart by reading pairs while the next item is a
/// field name: a value is always consumed as a value, and an entry id (`<ms>-<seq>`) is
/// never a field name.
fn parse_log_page(reply: &[RedisResult]) -> Result<Vec<(String, Completion)>, StoreError> {
    let mut page = Vec::new();
    let mut at = 0;
    while at < reply.len() {
        let id = text_at(reply, at)?;
        at += 1;
        let mut fields = std::collections::HashMap::new();
        while let Some(name) = reply.get(at).and_then(bytes).and_then(|b| LOG_FIELDS.iter().find(|f| f.as_bytes() == b)) {
            let value = reply.get(at + 1).and_then(bytes).ok_or_else(|| StoreError::Unexpected(format!("log entry {id}: {name} has no value")))?;
            fields.insert(*name, value);
            at += 2;
        }
        let text = |name: &str| String::from_utf8_lossy(fields.get(name).copied().unwrap_or_default()).into_owned();
        let completion = Completion {
            task_id: text("task_id"),
            user_id: text("user_id"),
            slot: parse_int(fields.get("slot").copied().unwrap_or_default())?,
            completed_at: parse_int(fields.get("completed_at").copied().unwrap_or_default())?,
            payload: payload(fields.get("payload").copied())?,
        };
        page.push((id, completion));
    }
    Ok(page)
}

/// `user_state.lua` (its layout is described there).
fn parse_user_state(reply: &[RedisResult]) -> Result<UserState, StoreError> {
    let head = text_at(reply, 2)?;
    let next_task = if head.is_empty() { None } else { Some((head, int_at(reply, 3)?)) };
    let ledger = ledger_at(reply, 4)?;
    let recent_completions = (6..reply.len()).map(|i| int_at(reply, i)).collect::<Result<_, _>>()?;
    Ok(UserState { now: int_at(reply, 0)?, queued: int_at(reply, 1)?, next_task, ledger, recent_completions })
}

/// `overview.lua` (its layout is described there).
fn parse_overview(reply: &[RedisResult]) -> Result<Overview, StoreError> {
    let mut at = 3;
    let next_due = groups(reply, &mut at, 3)?
        .chunks(3)
        .map(|g| Ok((text_at(g, 0)?, int_at(g, 1)?, int_at(g, 2)?)))
        .collect::<Result<_, StoreError>>()?;
    let recent = groups(reply, &mut at, 5)?
        .chunks(5)
        .map(|g| {
            let mut completion = completion(g)?;
            completion.payload = payload(g.get(4).and_then(bytes))?;
            Ok(completion)
        })
        .collect::<Result<_, StoreError>>()?;
    let user_queued = groups(reply, &mut at, 3)?
        .chunks(3)
        .map(|g| Ok((text_at(g, 0)?, int_at(g, 1)?, payload(g.get(2).and_then(bytes))?)))
        .collect::<Result<_, StoreError>>()?;
    let user_completed = groups(reply, &mut at, 1)?.iter().map(|v| int_at(std::slice::from_ref(v), 0)).collect::<Result<_, _>>()?;
    Ok(Overview {
        now: int_at(reply, 0)?,
        queued_tasks: int_at(reply, 1)?,
        waiting_users: int_at(reply, 2)?,
        next_due,
        recent,
        user_queued,
        user_completed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use RedisResult::{Binary, Int64, Nil};

    fn text(s: &str) -> RedisResult {
        Binary(s.as_bytes().to_vec())
    }

    fn completion(id: &str, user: &str, slot: i64, at: i64) -> [RedisResult; 4] {
        [text(id), text(user), Int64(slot), text(&at.to_string())]
    }

    #[test]
    fn prepared_with_and_without_an_earlier_request() {
        let reply = [Int64(1_000), Int64(1), text("")];
        let Ok(prepared) = parse_prepared(&reply) else { panic!("parse failed") };
        assert_eq!((prepared.now, prepared.backlog_full), (1_000, true));
        assert!(matches!(prepared.earlier, Earlier::None));

        let reply = [Int64(1_000), Int64(0), text("pending")];
        assert!(matches!(parse_prepared(&reply).map(|p| p.earlier), Ok(Earlier::Pending)));

        let reply = [Int64(1_000), Int64(0), text("0123456789abcdef01234567")];
        assert!(matches!(parse_prepared(&reply).map(|p| p.earlier), Ok(Earlier::Task(id)) if id == "0123456789abcdef01234567"));
        assert!(parse_prepared(&reply[..2]).is_err());
    }

    #[test]
    fn admissions_of_every_kind() {
        let mut reply = vec![text("admitted"), Int64(2_000), text("v1 2 1000:a 2000:b"), text("filed"), Int64(1_006), Int64(1), text("queued"), Int64(2)];
        reply.extend(completion("t1", "alice", 1_000, 1_005));
        let Ok(Admission::Admitted { slot, ledger, filed }) = parse_admission(&reply) else { panic!("not admitted") };
        assert_eq!((slot, ledger.as_slice(), filed.now, filed.ran.len()), (2_000, &b"v1 2 1000:a 2000:b"[..], 1_006, 1));
        assert!(matches!(filed.placement, Placement::Queued { position: 2 }));

        let reply = [text("earlier"), Int64(7), text("0123456789abcdef01234567"), Int64(1), text("v1 1 5:a")];
        let Ok(Admission::Earlier { earlier: Earlier::Task(id), now: 7, ledger: Some(ledger) }) = parse_admission(&reply) else { panic!("not a replay") };
        assert_eq!((id.as_str(), ledger.as_slice()), ("0123456789abcdef01234567", &b"v1 1 5:a"[..]));
        let reply = [text("earlier"), Int64(7), text("pending"), Int64(0), text("")];
        assert!(matches!(parse_admission(&reply), Ok(Admission::Earlier { earlier: Earlier::Pending, ledger: None, .. })));
        assert!(matches!(parse_admission(&[text("full"), Int64(7)]), Ok(Admission::BacklogFull)));
        // A foreign value in the ledger's key is reported, not overwritten.
        assert!(matches!(parse_admission(&[text("corrupt"), text("hello")]), Err(StoreError::Unexpected(_))));
        // An admission that filed no task, or two, is a bug.
        assert!(parse_admission(&[text("admitted"), Int64(2_000), text("v1 1 2000:b"), text("filed"), Int64(1), Int64(0)]).is_err());
    }

    #[test]
    fn filed_tasks_carry_their_placements_and_completions() {
        let mut reply = vec![text("filed"), Int64(1_006), Int64(2), text("completed"), Int64(1_005), text("queued"), Int64(1)];
        reply.extend(completion("t1", "alice", 1_000, 1_005));
        let Ok(Filed { placements, now, ran }) = parse_filed(&reply, 2) else { panic!("not filed") };
        assert!(matches!(placements[..], [Placement::Completed { completed_at: 1_005 }, Placement::Queued { position: 1 }]));
        assert_eq!(now, 1_006);
        assert_eq!(ran.len(), 1);
        assert_eq!((ran[0].user_id.as_str(), ran[0].slot, ran[0].completed_at), ("alice", 1_000, 1_005));
        // A reply for another number of tasks than were sent is a bug, not a guess.
        assert!(parse_filed(&reply, 1).is_err());
    }

    #[test]
    fn a_poke_answers_one_placement() {
        let reply = [text("queued"), Int64(4), Int64(2_000)];
        let Ok(admitted) = parse_poked(&reply) else { panic!("parse failed") };
        assert!(matches!(admitted.placement, Placement::Queued { position: 4 }) && admitted.ran.is_empty());
        assert_eq!(admitted.now, 2_000);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for reply in [
            vec![],
            vec![text("admitted"), Int64(1), Int64(1)],
            vec![text("filed"), Int64(1), Int64(1), text("queued")],
            vec![text("filed"), Int64(1), Int64(1), text("later"), Int64(2)],
            vec![text("filed"), Int64(1), Int64(1), text("queued"), Int64(2), text("t1"), text("alice")],
            vec![Nil, Int64(1), Int64(2)],
        ] {
            assert!(parse_filed(&reply, 1).is_err(), "{reply:?}");
        }
        assert!(parse_poked(&[text("queued"), text("x"), Int64(2)]).is_err());
        assert!(parse_drained(&[text("active"), Int64(5)]).is_err());
        assert!(parse_overview(&[Int64(1), Int64(2), Int64(3), Int64(5)]).is_err());
    }

    #[test]
    fn drain_replies() {
        assert!(matches!(parse_drained(&[text("busy"), text("tok")]), Ok(Drained::Busy { holder }) if holder == "tok"));
        let mut reply = vec![text("active"), Int64(12), Int64(1)];
        reply.extend(completion("t1", "bob", 10, 11));
        reply.extend(completion("t2", "eve", 10, 12));
        let Ok(Drained::Active { next_due_in_ms, more_due_now, ran }) = parse_drained(&reply) else { panic!("not active") };
        assert_eq!((next_due_in_ms, more_due_now, ran.len()), (12, true, 2));
        assert!(matches!(parse_drained(&[text("idle"), Int64(0), Int64(0)]), Ok(Drained::Idle { ran }) if ran.is_empty()));
    }

    #[test]
    fn task_records_and_log_pages() {
        assert!(matches!(parse_task(&[Nil, Nil, Nil, Nil, Nil]), Ok(None)));
        let Ok(Some(task)) = parse_task(&[text("alice"), text("1000"), Nil, Nil, Nil]) else { panic!("no task") };
        assert_eq!((task.user_id.as_str(), task.slot, task.completed_at, task.cancelled_at), ("alice", 1_000, None, None));
        assert!(task.payload.is_none());
        let Ok(Some(task)) = parse_task(&[text("alice"), text("1000"), text("1004"), Nil, text(r#"{"b":1,"a":2}"#)]) else { panic!("no task") };
        assert_eq!(task.completed_at, Some(1_004));
        assert_eq!(task.payload.as_ref().map(|p| p.get()), Some(r#"{"b":1,"a":2}"#));
        let Ok(Some(task)) = parse_task(&[text("alice"), text("1000"), Nil, text("900"), Nil]) else { panic!("no task") };
        assert_eq!(task.cancelled_at, Some(900));
        assert!(parse_task(&[text("alice"), text("1000"), Nil, Nil, text("{not json")]).is_err());

        // Entries with and without a payload, and a user id and a payload that look like field
        // names or entry ids, follow each other in one flattened reply.
        let entry = |id: &str, user: &str, payload: Option<&str>| {
            let mut items = vec![text(id), text("task_id"), text("t"), text("user_id"), text(user), text("slot"), text("5"), text("completed_at"), text("6")];
            if let Some(p) = payload {
                items.extend([text("payload"), text(p)]);
            }
            items
        };
        let reply: Vec<RedisResult> =
            [entry("1-0", "a", None), entry("1-1", "payload", Some(r#""slot""#)), entry("1-2", "1-3", Some("[1]")), entry("1-3", "c", None)].concat();
        let Ok(page) = parse_log_page(&reply) else { panic!("parse failed") };
        let seen: Vec<_> = page.iter().map(|(id, c)| (id.as_str(), c.user_id.as_str(), c.payload.as_ref().map(|p| p.get()))).collect();
        assert_eq!(seen, [("1-0", "a", None), ("1-1", "payload", Some(r#""slot""#)), ("1-2", "1-3", Some("[1]")), ("1-3", "c", None)]);
    }

    #[test]
    fn user_state_with_and_without_a_backlog() {
        let reply = [Int64(5_000), Int64(2), text("0123456789abcdef01234567"), Int64(6_000), Int64(1), text("v1 3 5000:a"), text("4000"), text("5000")];
        let Ok(state) = parse_user_state(&reply) else { panic!("parse failed") };
        assert_eq!((state.now, state.queued), (5_000, 2));
        assert_eq!(state.next_task, Some(("0123456789abcdef01234567".to_string(), 6_000)));
        assert_eq!(state.ledger.as_deref(), Some(&b"v1 3 5000:a"[..]));
        assert_eq!(state.recent_completions, vec![4_000, 5_000]);
        let Ok(state) = parse_user_state(&[Int64(5_000), Int64(0), text(""), Int64(0), Int64(0), text("")]) else { panic!("parse failed") };
        assert!(state.next_task.is_none() && state.ledger.is_none() && state.recent_completions.is_empty());
        assert!(parse_user_state(&reply[..4]).is_err());
    }

    #[test]
    fn overview_groups() {
        let mut reply = vec![Int64(100), Int64(5), Int64(2)];
        reply.extend([Int64(1), text("alice"), Int64(3), text("150")]);
        reply.push(Int64(1));
        reply.extend(completion("t9", "bob", 90, 95));
        reply.push(text(r#"{"job":7}"#));
        reply.extend([Int64(2), text("q1"), text("150"), text(""), text("q2"), text("1150"), text("true")]);
        reply.extend([Int64(1), text("99")]);
        let Ok(overview) = parse_overview(&reply) else { panic!("parse failed") };
        assert_eq!((overview.now, overview.queued_tasks, overview.waiting_users), (100, 5, 2));
        assert_eq!(overview.next_due, vec![("alice".to_string(), 3, 150)]);
        assert_eq!(overview.recent.len(), 1);
        assert_eq!(overview.recent[0].payload.as_ref().map(|p| p.get()), Some(r#"{"job":7}"#));
        let queued: Vec<_> = overview.user_queued.iter().map(|(id, slot, p)| (id.as_str(), *slot, p.as_ref().map(|p| p.get()))).collect();
        assert_eq!(queued, [("q1", 150, None), ("q2", 1_150, Some("true"))]);
        assert_eq!(overview.user_completed, vec![99]);
    }
}
