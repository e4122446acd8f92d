//! The queue and the executor, on Redis: every step is one Lua script, so it is atomic
//! across replicas and exactly-once by construction.
//!
//! Data (all under the `key_prefix`; `<u>` is the encoded user id, see `keys.rs`):
//! - `q:<u>`    list of the user's pending tasks, `"<slot>:<task id>"`, in slot order;
//! - `due`      sorted set: user → earliest instant their head task may start;
//! - `done:<u>` list of the user's last completion times (expires a minute after the last);
//! - `t:<id>`   hash of a task: `u` user id, `s` slot, `c` completed-at (kept a day once done);
//! - `lease`    the drainer lease (see `drainer.rs`); `kick` rate-limits wake-ups;
//! - `metrics`  hash of the counters behind `/metrics` (see `metrics.rs`).
//!
//! "Running" a task is `run_due` below: it takes the user's head task when the slot rule
//! allows it on the user's actual completion times, records the completion, and appends the
//! log entry (SPEC §3), all in one script. A replica that dies mid-task therefore either ran
//! it completely or not at all, and a doubled wake-up finds nothing left to run. The clock is
//! the Redis server's `TIME`, the same for every replica (SPEC §1).

use crate::config::Config;
use crate::keys::UserKey;
use crate::slot::{MINUTE_MS, SECOND_MS};
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

/// Completed task records are kept this long for `GET /api/v1/task/{id}`.
const TASK_TTL_MS: i64 = 24 * 3_600_000;

/// Shared by every script: configuration from ARGV[1..7], and the functions that run tasks.
const LIB: &str = r#"
local prefix, log_key = ARGV[1], ARGV[2]
local per_second, per_minute = tonumber(ARGV[3]), tonumber(ARGV[4])
local task_ttl = tonumber(ARGV[5])
local second_ms, minute_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local due_key, lease_key = prefix .. 'due', prefix .. 'lease'
local metrics_key = prefix .. 'metrics'
local history = math.max(per_second, per_minute)

-- Counters for /metrics (metrics.rs), updated in the same script as what they count.
local function count(field, n)
  if n ~= 0 then redis.call('HINCRBY', metrics_key, field, n) end
end

local function int(x) return string.format('%.0f', x) end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- slot.rs `next_slot`, applied to the user's completion times (SPEC §1: the log is the proof).
local function earliest_start(done, slot)
  local at = slot
  local n = redis.call('LLEN', done)
  if per_second > 0 and n >= per_second then
    at = math.max(at, tonumber(redis.call('LINDEX', done, n - per_second)) + second_ms)
  end
  if per_minute > 0 and n >= per_minute then
    at = math.max(at, tonumber(redis.call('LINDEX', done, n - per_minute)) + minute_ms)
  end
  return at
end

-- The rule checked another way than `earliest_start` (by counting the stored completions in
-- each window), so the `rule_violations` metric is an independent witness; it must stay 0.
local function breaks_rule(done, slot, now)
  if now < slot then return true end
  local in_second, in_minute = 0, 0
  for _, t in ipairs(redis.call('LRANGE', done, 0, -1)) do
    local age = now - tonumber(t)
    if age < second_ms then in_second = in_second + 1 end
    if age < minute_ms then in_minute = in_minute + 1 end
  end
  return (per_second > 0 and in_second >= per_second) or (per_minute > 0 and in_minute >= per_minute)
end

local function split(entry)
  local sep = string.find(entry, ':', 1, true)
  return tonumber(string.sub(entry, 1, sep - 1)), string.sub(entry, sep + 1)
end

-- Runs the user's head tasks that may start at `now`, appending each completion to `out`,
-- and files the user under the instant their next head task may start.
local function run_due(member, now, out)
  local q = prefix .. 'q:' .. member
  local done = prefix .. 'done:' .. member
  while true do
    local head = redis.call('LINDEX', q, 0)
    if not head then
      redis.call('ZREM', due_key, member)
      return
    end
    local slot, id = split(head)
    local at = earliest_start(done, slot)
    if at > now then
      redis.call('ZADD', due_key, int(at), member)
      return
    end
    redis.call('LPOP', q)
    count('queued', -1)
    if breaks_rule(done, slot, now) then count('rule_violations', 1) end
    if history > 0 then
      redis.call('RPUSH', done, int(now))
      redis.call('LTRIM', done, -history, -1)
      redis.call('PEXPIRE', done, minute_ms + second_ms)
    end
    local late = now - slot
    count('completed', 1)
    count('lateness_sum_ms', late)
    for _, bound in ipairs(lateness_buckets_ms) do
      if late <= bound then count('lateness_le:' .. bound, 1) break end
    end
    local task = prefix .. 't:' .. id
    local user = redis.call('HGET', task, 'u') or ''
    redis.call('HSET', task, 'c', int(now))
    redis.call('PEXPIRE', task, task_ttl)
    redis.call('XADD', log_key, '*', 'task_id', id, 'user_id', user, 'slot', int(slot), 'completed_at', int(now))
    for _, v in ipairs({id, user, int(slot), int(now)}) do table.insert(out, v) end
  end
end

-- 1 when tasks wait but no drainer holds the lease; at most one such answer per 200 ms, so
-- a burst of requests publishes one wake-up, not one each.
local function kick_needed()
  if redis.call('EXISTS', lease_key) == 1 or redis.call('ZCARD', due_key) == 0 then return 0 end
  if redis.call('SET', prefix .. 'kick', '1', 'NX', 'PX', 200) then return 1 end
  return 0
end

-- Admission answers are counted here rather than by another round trip from the handler.
local function count_answer(status, placement, n)
  count('status:' .. status, n or 1)
  count('admitted:' .. placement, n or 1)
end

local function append(result, out)
  for _, v in ipairs(out) do table.insert(result, v) end
  return result
end
"#;

/// ARGV[8..]: member, user id, task id, slot, ledger key, ledger expiry (epoch ms),
/// idempotency key ('' for none; it then names this task for a day).
/// Files the task in slot order (admissions can reach here in another order than they
/// committed), runs it if it is the head and may start now, and lets the ledger expire a
/// minute after its last slot (SET by a later commit clears the TTL, so only extend it).
/// Returns `[status, completed_at | queue position, kick, now, completions…]`.
const ADMIT: &str = r#"
local member, user, id, slot_s = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local ledger_key, ledger_expire_at, idem = ARGV[12], tonumber(ARGV[13]), ARGV[14]
count('cas_retries', tonumber(ARGV[15]))
local slot = tonumber(slot_s)
if idem ~= '' then redis.call('SET', idem, id, 'PX', task_ttl) end
local now = now_ms()
local q = prefix .. 'q:' .. member
local task = prefix .. 't:' .. id
redis.call('HSET', task, 'u', user, 's', slot_s)
local entry = slot_s .. ':' .. id
local n = redis.call('LLEN', q)
local i, pivot = n - 1, nil
while i >= 0 do
  local e = redis.call('LINDEX', q, i)
  if split(e) <= slot then pivot = e break end
  i = i - 1
end
if i == n - 1 then redis.call('RPUSH', q, entry)
elseif pivot then redis.call('LINSERT', q, 'AFTER', pivot, entry)
else redis.call('LPUSH', q, entry) end
count('queued', 1)
local position = i + 2
local out = {}
if position == 1 then run_due(member, now, out) end
local ttl = redis.call('PTTL', ledger_key)
if ttl == -1 or (ttl >= 0 and now + ttl < ledger_expire_at) then
  redis.call('PEXPIREAT', ledger_key, int(ledger_expire_at))
end
local completed = redis.call('HGET', task, 'c')
if completed then
  count_answer('200', 'inline')
  return append({'completed', tonumber(completed), kick_needed(), now}, out)
end
count_answer('202', 'queued')
return append({'queued', position, kick_needed(), now}, out)
"#;

/// ARGV[8..]: member, task id. Runs the user's due head tasks now; same reply as ADMIT
/// (position 0 when still queued). Admission calls it while it waits for a task ADMIT
/// queued, so a task found completed turns that request's answer from 202 into 200.
const POKE: &str = r#"
local member, id = ARGV[8], ARGV[9]
local now = now_ms()
local out = {}
run_due(member, now, out)
local completed = redis.call('HGET', prefix .. 't:' .. id, 'c')
if completed then
  count_answer('202', 'queued', -1)
  count_answer('200', 'inline')
  return append({'completed', tonumber(completed), kick_needed(), now}, out)
end
return append({'queued', 0, kick_needed(), now}, out)
"#;

/// ARGV[8..]: token, handoff token, lease TTL ms, batch size.
/// Takes or renews the lease (free, ours, or handed to us by the tick we got), runs what is
/// due for up to `batch` users, and answers when the next task is due. With nothing queued
/// it drops the lease, ending the tick chain until an admission kicks it again.
/// Returns `['busy', holder]` or `[state, ms until next due, more due now?, completions…]`.
const DRAIN: &str = r#"
local token, handoff = ARGV[8], ARGV[9]
local lease_ttl, batch = tonumber(ARGV[10]), tonumber(ARGV[11])
local holder = redis.call('GET', lease_key)
if holder and holder ~= token and holder ~= handoff then return {'busy', holder} end
local now = now_ms()
local members = redis.call('ZRANGEBYSCORE', due_key, '-inf', int(now), 'LIMIT', 0, batch)
local out = {}
for _, m in ipairs(members) do run_due(m, now, out) end
local nxt = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
if #nxt == 0 then
  redis.call('DEL', lease_key)
  return append({'idle', 0, 0}, out)
end
redis.call('SET', lease_key, token, 'PX', lease_ttl)
local more = 0
if #members == batch then more = 1 end
return append({'active', math.max(0, tonumber(nxt[2]) - now), more}, out)
"#;

/// Answers 1 when the drainer should be woken (tasks wait, nobody holds the lease).
const SWEEP: &str = "return kick_needed()";

/// ARGV[8..]: member, idempotency key ('' for none).
/// The clock reading that admission starts from, the user's backlog, and what an earlier
/// request with the same Idempotency-Key left: its task id, or 'pending' while that request
/// is still being admitted ('' when there was none; we then reserve the key for a while).
const PREPARE: &str = r#"
local member, idem = ARGV[8], ARGV[9]
local now = now_ms()
local backlog = redis.call('LLEN', prefix .. 'q:' .. member)
local earlier = ''
if idem ~= '' then
  earlier = redis.call('GET', idem) or ''
  if earlier == '' then redis.call('SET', idem, 'pending', 'PX', 5000) end
end
return {now, backlog, earlier}
"#;

/// ARGV[8]: idempotency key. Drops it if it is still only a reservation.
const RELEASE: &str = r#"
if redis.call('GET', ARGV[8]) == 'pending' then redis.call('DEL', ARGV[8]) end
return 0
"#;

/// ARGV[8..]: member, task id. A task's position in its user's queue (1-based; 0 when it is
/// no longer queued), for answering a repeated request.
const POSITION: &str = r#"
local q = prefix .. 'q:' .. ARGV[8]
local slot = redis.call('HGET', prefix .. 't:' .. ARGV[9], 's')
if not slot then return 0 end
local index = redis.call('LPOS', q, slot .. ':' .. ARGV[9])
if not index then return 0 end
return index + 1
"#;

/// Answers `/metrics`: every counter (field, value), then `waiting_users` and its value.
const METRICS: &str = r#"
local reply = redis.call('HGETALL', metrics_key)
table.insert(reply, 'waiting_users')
table.insert(reply, tostring(redis.call('ZCARD', due_key)))
return reply
"#;

/// ARGV[8..]: status code. Counts an answer that no script counted (errors, reads, replays).
const COUNT_STATUS: &str = "count('status:' .. ARGV[8], 1) return 0";

/// ARGV[8..]: member ('' for none), how many soonest users, recent completions, queued
/// tasks of the member. A bounded snapshot for the page (work independent of the number of
/// users), flattened: `now, queued, waiting, n, (user, queued, next)×n, m,
/// (task, user, slot, completed)×m, k, (task, slot)×k, j, (completed)×j`.
const OVERVIEW: &str = r#"
local member = ARGV[8]
local soonest, recent, queued_max = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local reply = {now_ms(), tonumber(redis.call('HGET', metrics_key, 'queued') or '0'), redis.call('ZCARD', due_key)}
local function user_of(id) return redis.call('HGET', prefix .. 't:' .. id, 'u') or '' end
local next = redis.call('ZRANGE', due_key, 0, soonest - 1, 'WITHSCORES')
table.insert(reply, #next / 2)
for i = 1, #next, 2 do
  local q = prefix .. 'q:' .. next[i]
  local head = redis.call('LINDEX', q, 0)
  local user = ''
  if head then local _, id = split(head) user = user_of(id) end
  for _, v in ipairs({user, redis.call('LLEN', q), tonumber(next[i + 1])}) do table.insert(reply, v) end
end
local log = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', recent)
table.insert(reply, #log)
for _, entry in ipairs(log) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  for _, v in ipairs({f.task_id or '', f.user_id or '', f.slot or '0', f.completed_at or '0'}) do table.insert(reply, v) end
end
local waiting, done = {}, {}
if member ~= '' then
  waiting = redis.call('LRANGE', prefix .. 'q:' .. member, 0, queued_max - 1)
  done = redis.call('LRANGE', prefix .. 'done:' .. member, 0, -1)
end
table.insert(reply, #waiting)
for _, e in ipairs(waiting) do
  local slot, id = split(e)
  table.insert(reply, id) table.insert(reply, slot)
end
table.insert(reply, #done)
for _, t in ipairs(done) do table.insert(reply, t) end
return reply
"#;

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
    pub backlog: i64,
    pub earlier: Earlier,
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
}

/// The reply of ADMIT and POKE.
pub struct Admitted {
    pub placement: Placement,
    /// The drainer must be woken (publish a tick).
    pub kick: bool,
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
    /// The asked-for user's queued tasks (task id, slot) in run order, and last completions.
    pub user_queued: Vec<(String, i64)>,
    pub user_completed: Vec<i64>,
}

/// A task record for `GET /api/v1/task/{id}`.
pub struct TaskRecord {
    pub user_id: String,
    pub slot: i64,
    pub completed_at: Option<i64>,
}

pub struct Queue<'a> {
    conn: Connection,
    config: &'a Config,
}

impl<'a> Queue<'a> {
    pub async fn connect(config: &'a Config) -> Result<Queue<'a>, StoreError> {
        let conn = Connection::open(&config.redis_address).await.map_err(unavailable)?;
        Ok(Queue { conn, config })
    }

    /// The Redis clock (epoch ms), the user's current backlog, and what an earlier request
    /// with the same idempotency key (`idem`, a key from `Keys::idempotency`) left.
    pub async fn prepare(&self, user: &UserKey, idem: Option<&str>) -> Result<Prepared, StoreError> {
        let reply = self.eval(PREPARE, &[&user.0, idem.unwrap_or("")]).await?;
        let earlier = match text_at(&reply, 2)?.as_str() {
            "" => Earlier::None,
            "pending" => Earlier::Pending,
            task_id => Earlier::Task(task_id.to_string()),
        };
        Ok(Prepared { now: int_at(&reply, 0)?, backlog: int_at(&reply, 1)?, earlier })
    }

    /// Drops an idempotency reservation when admission did not get as far as storing a task.
    pub async fn release(&self, idem: &str) -> Result<(), StoreError> {
        self.eval(RELEASE, &[idem]).await.map(|_| ())
    }

    /// The task's 1-based place in its user's queue, 0 if it is not queued.
    pub async fn position(&self, user: &UserKey, task_id: &str) -> Result<i64, StoreError> {
        let reply = self.eval(POSITION, &[&user.0, task_id]).await?;
        int_at(&reply, 0)
    }

    pub async fn admit(
        &self,
        user: &UserKey,
        user_id: &str,
        task_id: &str,
        slot: i64,
        ledger_key: &str,
        idem: Option<&str>,
        cas_retries: u32,
    ) -> Result<Admitted, StoreError> {
        // Once the last slot is a minute old the ledger no longer constrains anything.
        let expire_at = (slot + MINUTE_MS + SECOND_MS).to_string();
        let slot = slot.to_string();
        let idem = idem.unwrap_or("");
        let retries = cas_retries.to_string();
        let reply = self.eval(ADMIT, &[&user.0, user_id, task_id, &slot, ledger_key, &expire_at, idem, &retries]).await?;
        admitted(&reply)
    }

    pub async fn poke(&self, user: &UserKey, task_id: &str) -> Result<Admitted, StoreError> {
        let reply = self.eval(POKE, &[&user.0, task_id]).await?;
        admitted(&reply)
    }

    pub async fn drain(&self, token: &str, handoff: &str, lease_ttl_ms: i64, batch: i64) -> Result<Drained, StoreError> {
        let (ttl, batch) = (lease_ttl_ms.to_string(), batch.to_string());
        let reply = self.eval(DRAIN, &[token, handoff, &ttl, &batch]).await?;
        match text_at(&reply, 0)?.as_str() {
            "busy" => Ok(Drained::Busy { holder: text_at(&reply, 1)? }),
            "idle" => Ok(Drained::Idle { ran: completions(&reply[3..])? }),
            "active" => Ok(Drained::Active {
                next_due_in_ms: int_at(&reply, 1)?,
                more_due_now: int_at(&reply, 2)? == 1,
                ran: completions(&reply[3..])?,
            }),
            other => Err(StoreError::Unexpected(format!("drain answered {other:?}"))),
        }
    }

    /// Whether the drainer needs waking; `healthz` calls this, so a liveness probe also
    /// sweeps up tasks stranded when every drainer was down.
    pub async fn sweep(&self) -> Result<bool, StoreError> {
        let reply = self.eval(SWEEP, &[]).await?;
        Ok(int_at(&reply, 0)? == 1)
    }

    /// Wakes the drainer on every replica; `handoff` lets the receiver take over our lease.
    pub async fn publish_tick(&self, handoff: &str) -> Result<(), StoreError> {
        self.conn.publish(self.config.keys.tick_channel(), handoff.as_bytes()).await.map_err(unavailable)
    }

    pub async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let key = self.config.keys.task(task_id);
        let reply = self.execute("HMGET", &[&key, "u", "s", "c"]).await?;
        let (Some(user), Some(slot)) = (reply.first().and_then(bytes), reply.get(1).and_then(bytes)) else {
            return Ok(None);
        };
        Ok(Some(TaskRecord {
            user_id: String::from_utf8_lossy(user).into_owned(),
            slot: parse_int(slot)?,
            completed_at: reply.get(2).and_then(bytes).map(parse_int).transpose()?,
        }))
    }

    /// Up to `limit` log entries after the stream id `after` (exclusive), oldest first,
    /// each with its stream id (the paging cursor).
    pub async fn log_page(&self, after: Option<&str>, limit: u32) -> Result<Vec<(String, Completion)>, StoreError> {
        let start = after.map(|c| format!("({c}")).unwrap_or_else(|| "-".to_string());
        let count = limit.to_string();
        let reply = self.execute("XRANGE", &[self.config.keys.log(), &start, "+", "COUNT", &count]).await?;
        // The host flattens nested replies: each entry is its id then 4 field/value pairs.
        let mut page = Vec::new();
        for entry in reply.chunks(9) {
            let id = text_at(entry, 0)?;
            let mut fields = std::collections::HashMap::new();
            for pair in entry[1..].chunks(2) {
                fields.insert(text_at(pair, 0)?, pair.get(1).and_then(bytes).unwrap_or_default().to_vec());
            }
            let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
            page.push((
                id,
                Completion {
                    task_id: String::from_utf8_lossy(&field("task_id")).into_owned(),
                    user_id: String::from_utf8_lossy(&field("user_id")).into_owned(),
                    slot: parse_int(&field("slot"))?,
                    completed_at: parse_int(&field("completed_at"))?,
                },
            ));
        }
        Ok(page)
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
        let reply = self.eval(METRICS, &[]).await?;
        reply.chunks(2).map(|pair| Ok((text_at(pair, 0)?, int_at(pair, 1)?))).collect()
    }

    /// Counts an HTTP answer that no script counted.
    pub async fn count_status(&self, status: u16) -> Result<(), StoreError> {
        self.eval(COUNT_STATUS, &[&status.to_string()]).await.map(|_| ())
    }

    pub async fn overview(&self, user: Option<&UserKey>, soonest: usize, recent: usize, queued: usize) -> Result<Overview, StoreError> {
        let member = user.map(|u| u.0.as_str()).unwrap_or("");
        let (soonest, recent, queued) = (soonest.to_string(), recent.to_string(), queued.to_string());
        let reply = self.eval(OVERVIEW, &[member, &soonest, &recent, &queued]).await?;
        let mut at = 3;
        let next_due = groups(&reply, &mut at, 3)?
            .chunks(3)
            .map(|g| Ok((text_at(g, 0)?, int_at(g, 1)?, int_at(g, 2)?)))
            .collect::<Result<_, StoreError>>()?;
        let recent = completions(groups(&reply, &mut at, 4)?)?;
        let user_queued = groups(&reply, &mut at, 2)?
            .chunks(2)
            .map(|g| Ok((text_at(g, 0)?, int_at(g, 1)?)))
            .collect::<Result<_, StoreError>>()?;
        let user_completed = groups(&reply, &mut at, 1)?.iter().map(|v| int_at(std::slice::from_ref(v), 0)).collect::<Result<_, _>>()?;
        Ok(Overview {
            now: int_at(&reply, 0)?,
            queued_tasks: int_at(&reply, 1)?,
            waiting_users: int_at(&reply, 2)?,
            next_due,
            recent,
            user_queued,
            user_completed,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.execute("PING", &[]).await.map(|_| ())
    }

    async fn eval(&self, body: &str, args: &[&str]) -> Result<Vec<RedisResult>, StoreError> {
        let buckets: Vec<String> = LATENESS_BUCKETS_MS.iter().map(|b| b.to_string()).collect();
        let script = format!("local lateness_buckets_ms = {{{}}}\n{LIB}\n{body}", buckets.join(", "));
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
        let mut params = vec![param(&script), RedisParameter::Int64(0)];
        params.extend(header.iter().map(param));
        params.extend(args.iter().map(param));
        self.conn.execute("EVAL", params).await.map_err(unavailable)
    }

    async fn execute(&self, command: &str, args: &[&str]) -> Result<Vec<RedisResult>, StoreError> {
        self.conn.execute(command, args.iter().map(param)).await.map_err(unavailable)
    }
}

fn param(s: impl AsRef<str>) -> RedisParameter {
    RedisParameter::Binary(s.as_ref().as_bytes().to_vec())
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
    items
        .chunks(4)
        .map(|c| {
            Ok(Completion {
                task_id: text_at(c, 0)?,
                user_id: text_at(c, 1)?,
                slot: int_at(c, 2)?,
                completed_at: int_at(c, 3)?,
            })
        })
        .collect()
}

fn admitted(reply: &[RedisResult]) -> Result<Admitted, StoreError> {
    let value = int_at(reply, 1)?;
    let placement = match text_at(reply, 0)?.as_str() {
        "completed" => Placement::Completed { completed_at: value },
        "queued" => Placement::Queued { position: value },
        other => return Err(StoreError::Unexpected(format!("admit answered {other:?}"))),
    };
    Ok(Admitted {
        placement,
        kick: int_at(reply, 2)? == 1,
        now: int_at(reply, 3)?,
        ran: completions(reply.get(4..).unwrap_or_default())?,
    })
}
