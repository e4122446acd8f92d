-- Shared by every script (scripts.rs prepends it, after `lateness_buckets_ms`): the
-- configuration from ARGV[1..7], and the functions that run tasks. A script's own
-- arguments start at ARGV[8].
local prefix, log_key = ARGV[1], ARGV[2]
local per_second, per_minute = tonumber(ARGV[3]), tonumber(ARGV[4])
local task_ttl = tonumber(ARGV[5])
local second_ms, minute_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
-- Keys of the queue and the drainer (keys.rs lists them all).
local due_key, lease_key = prefix .. 'due', prefix .. 'lease'
local metrics_key, kick_key, tick_channel = prefix .. 'metrics', prefix .. 'kick', prefix .. 'tick'
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

-- slot.rs `next_slot`: the earliest instant from `at` that keeps the rule, given a user's
-- earlier times (slots or completions), where `back(k)` is the k-th newest of them (1 = the
-- newest) or nil. `runtime-tests/tests/lua_rule.rs` holds it to slot.rs on random histories.
local function earliest(at, back)
  if per_second > 0 then
    local t = back(per_second)
    if t then at = math.max(at, t + second_ms) end
  end
  if per_minute > 0 then
    local t = back(per_minute)
    if t then at = math.max(at, t + minute_ms) end
  end
  return at
end

-- The rule applied to the user's completion times (SPEC §1: the log is the proof).
local function earliest_start(done, slot)
  local n = redis.call('LLEN', done)
  return earliest(slot, function(k)
    if n >= k then return tonumber(redis.call('LINDEX', done, n - k)) end
  end)
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

-- Whether the user's queue already holds `max_backlog` tasks (0: no limit; SPEC §2's 429).
local function backlog_full(member, max_backlog)
  return max_backlog > 0 and redis.call('LLEN', prefix .. 'q:' .. member) >= max_backlog
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
    local record = redis.call('HMGET', task, 'u', 'p')
    local user = record[1] or ''
    redis.call('HSET', task, 'c', int(now))
    redis.call('PEXPIRE', task, task_ttl)
    local entry = {'task_id', id, 'user_id', user, 'slot', int(slot), 'completed_at', int(now)}
    if record[2] then
      table.insert(entry, 'payload')
      table.insert(entry, record[2])
    end
    redis.call('XADD', log_key, '*', unpack(entry))
    for _, v in ipairs({id, user, int(slot), int(now)}) do table.insert(out, v) end
  end
end

-- Wakes the drainers (a tick on their channel, spin.toml) when tasks wait but no drainer
-- holds the lease; at most once per 200 ms, so a burst of requests publishes one wake-up,
-- not one each. Publishing here saves the caller a round trip. Returns 1 if it published.
local function wake_drainer()
  if redis.call('EXISTS', lease_key) == 1 or redis.call('ZCARD', due_key) == 0 then return 0 end
  if not redis.call('SET', kick_key, '1', 'NX', 'PX', 200) then return 0 end
  redis.call('PUBLISH', tick_channel, '')
  return 1
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

-- Files tasks of one user (`tasks`: {id, slot, idem ('' for none; it then names the task for
-- a day), payload (JSON text, '' for none)}, in slot order; admissions can reach here in
-- another order than they committed), runs what is due now, and wakes the drainer if
-- nobody leads. Returns `['filed', now, k, (status, completed_at | queue position)×k,
-- completions…]`.
local function file_tasks(member, user, now, tasks)
  local q = prefix .. 'q:' .. member
  -- Each entry: task id, queue entry, and its 1-based queue position when it went to the tail
  -- (what RPUSH answers), or false.
  local entries = {}
  -- Whether the user's head task changed: only then can anything of theirs run now, or the
  -- instant they are filed under in `due` move. A task queued behind others leaves both as
  -- they were (every script that changes a head refiles the user), so the common queued
  -- admission skips `run_due` and its half-dozen commands.
  local new_head = false
  for _, task in ipairs(tasks) do
    local id, slot, idem, payload = task.id, task.slot, task.idem, task.payload
    local slot_s = int(slot)
    if idem ~= '' then redis.call('SET', idem, id, 'PX', task_ttl) end
    if payload ~= '' then
      redis.call('HSET', prefix .. 't:' .. id, 'u', user, 's', slot_s, 'p', payload)
    else
      redis.call('HSET', prefix .. 't:' .. id, 'u', user, 's', slot_s)
    end
    local entry = slot_s .. ':' .. id
    -- Usually the tail: insert after the last entry with a slot no later than ours.
    local tail = redis.call('LINDEX', q, -1)
    local position = false
    if not tail or split(tail) <= slot then
      position = redis.call('RPUSH', q, entry)
      if position == 1 then new_head = true end
    else
      local i, pivot = redis.call('LLEN', q) - 2, nil
      while i >= 0 do
        local e = redis.call('LINDEX', q, i)
        if split(e) <= slot then pivot = e break end
        i = i - 1
      end
      if pivot then redis.call('LINSERT', q, 'AFTER', pivot, entry)
      else
        redis.call('LPUSH', q, entry)
        new_head = true
      end
    end
    table.insert(entries, {id, entry, position})
  end
  count('queued', #entries)

  local out = {}
  if new_head then run_due(member, now, out) end
  wake_drainer()
  -- `run_due` reports each task it ran as (id, user, slot, completed_at); all of them were
  -- ahead of any of ours it left queued.
  local ran, ran_count = {}, #out / 4
  for r = 1, #out, 4 do ran[out[r]] = out[r + 3] end
  local inline, queued = 0, 0
  local reply = {'filed', now, #entries}
  for _, e in ipairs(entries) do
    local completed = ran[e[1]]
    if completed then
      inline = inline + 1
      table.insert(reply, 'completed')
      table.insert(reply, tonumber(completed))
    else
      queued = queued + 1
      table.insert(reply, 'queued')
      if e[3] then
        table.insert(reply, e[3] - ran_count)
      else
        table.insert(reply, (redis.call('LPOS', q, e[2], 'RANK', -1) or -1) + 1)
      end
    end
  end
  count_answer('200', 'inline', inline)
  count_answer('202', 'queued', queued)
  return append(reply, out)
end
