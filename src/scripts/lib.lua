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
