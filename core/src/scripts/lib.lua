-- Shared by every script (scripts.rs puts it before the scripts' bodies, after what it takes
-- from Rust: the key words `KEY_*` of keys.rs, `DEFAULT_KIND` and `lateness_buckets_ms`): the
-- configuration, and the functions that run tasks. Loaded once
-- as a Redis Functions library (or sent with each script where Redis refuses functions), so
-- the configuration is not read here but by `configure`, which every call runs first: ARGV[1..6].
-- A script's own arguments start at ARGV[7].
local prefix, log_key, task_ttl
-- The policy of a task whose record names none (policy.rs `Policy::spec`: the built-in
-- tier's `default` kind), and what every lane's completion history keeps: the largest quota
-- of any policy (entries) and its longest window (ms).
local default_spec, history, history_ms
-- Keys of the queue and the drainer (keys.rs lists them all).
local due_key, lease_key, metrics_key, kick_key, tick_channel

-- Counters for /metrics (metrics.rs), updated in the same script as what they count. They
-- are added up here and written once per field when the script ends (`flush_counts`, which
-- scripts.rs calls after every script's body), so a field a script moves both ways (a task
-- queued and run in one admission) costs no command at all.
local counted

-- The start of every call: the configuration from its ARGV[1..6], and no counts yet. (A
-- library's locals outlive a call, so nothing of an earlier call may be left in them.)
local function configure(argv)
  prefix, log_key, task_ttl = argv[1], argv[2], tonumber(argv[3])
  default_spec, history, history_ms = argv[4], tonumber(argv[5]), tonumber(argv[6])
  due_key, lease_key = prefix .. KEY_DUE, prefix .. KEY_LEASE
  metrics_key, kick_key, tick_channel = prefix .. KEY_METRICS, prefix .. KEY_KICK, prefix .. KEY_TICK
  counted = {}
end

local function count(field, n)
  counted[field] = (counted[field] or 0) + n
end

local function flush_counts()
  for field, n in pairs(counted) do
    if n ~= 0 then redis.call('HINCRBY', metrics_key, field, n) end
  end
end

local function int(x) return string.format('%.0f', x) end

-- A queue entry '<slot>:<task id>'.
local function split(entry)
  local sep = string.find(entry, ':', 1, true)
  return tonumber(string.sub(entry, 1, sep - 1)), string.sub(entry, sep + 1)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A policy's windows, `{{q, w}, …}`, from its spec ('1/1000,20/60000'; '' for none). The
-- parsed ones are kept across calls where the library outlives them: a spec always means the same.
local parsed_specs = {}
local function windows_of(spec)
  local windows = parsed_specs[spec]
  if not windows then
    windows = {}
    for q, w in string.gmatch(spec, '(%d+)/(%d+)') do windows[#windows + 1] = {tonumber(q), tonumber(w)} end
    parsed_specs[spec] = windows
  end
  return windows
end

-- slot.rs `next_slot`: the earliest instant from `at` for a task of `cost` units
-- under `windows`, given the lane's earlier times (slots or completions), where `back(k)` is
-- the k-th newest of them and its cost (1 = the newest), or nil. With `unit` every earlier
-- cost is 1, so the task *j* of a window is found by its index instead of by walking.
-- `runtime-tests/tests/lua_rule.rs` holds it to slot.rs on random policies and histories.
local function earliest(at, windows, cost, back, unit)
  local newest = back(1)
  if newest then at = math.max(at, newest) end
  for _, window in ipairs(windows) do
    local quota = window[1]
    local t
    if unit then
      t = back(math.max(1, quota - cost + 1))
    else
      local units, k = cost, 1
      while true do
        local c
        t, c = back(k)
        if not t then break end
        units = units + c
        if units > quota then break end
        k = k + 1
      end
    end
    if t then at = math.max(at, t + window[2]) end
  end
  return at
end

-- The lane's last completions that `windows` can look at (at least the newest, as the rule's
-- FIFO term does), oldest first, parsed once: stored as '<ms>' for a task of 1 unit and
-- '<ms>*<units>' otherwise. `unit`: every one of them cost 1 unit.
local function recent_completions(done, windows)
  local most = 1
  for _, window in ipairs(windows) do most = math.max(most, window[1]) end
  local times, costs, unit = {}, {}, true
  for i, entry in ipairs(redis.call('LRANGE', done, -most, -1)) do
    local star = string.find(entry, '*', 1, true)
    if star then
      times[i], costs[i], unit = tonumber(string.sub(entry, 1, star - 1)), tonumber(string.sub(entry, star + 1)), false
    else
      times[i], costs[i] = tonumber(entry), 1
    end
  end
  return {times = times, costs = costs, unit = unit}
end

-- The rule applied to the lane's completion times (the log is the proof).
local function earliest_start(completions, slot, windows, cost)
  local times, costs = completions.times, completions.costs
  local n = #times
  return earliest(slot, windows, cost, function(k)
    if k <= n then return times[n - k + 1], costs[n - k + 1] end
  end, completions.unit)
end

-- The rule checked another way than `earliest_start` (by adding up the units completed in
-- each window), so the `rule_violations` metric is an independent witness; it must stay 0.
local function breaks_rule(completions, slot, now, windows, cost)
  if now < slot then return true end
  local times, costs = completions.times, completions.costs
  for _, window in ipairs(windows) do
    local units = cost
    for i = 1, #times do
      if now - times[i] < window[2] then units = units + costs[i] end
    end
    if units > window[1] then return true end
  end
  return false
end

-- A task's policy and cost from its record's `l` and `w` fields (absent: the default).
local function task_rule(spec, cost)
  return windows_of(spec or default_spec), tonumber(cost) or 1
end

-- When the lane's head task (queue entry `head`) may start, by the rule on its completions.
local function head_start(member, head)
  local slot, id = split(head)
  local record = redis.call('HMGET', prefix .. KEY_TASK .. id, 'l', 'w')
  local windows, cost = task_rule(record[1], record[2])
  return earliest_start(recent_completions(prefix .. KEY_DONE .. member, windows), slot, windows, cost)
end

-- Whether the lane's queue already holds `max_backlog` tasks (0: no limit; the API's 429).
local function backlog_full(member, max_backlog)
  return max_backlog > 0 and redis.call('LLEN', prefix .. KEY_QUEUE .. member) >= max_backlog
end

-- Records that task `id` (slot `slot`, of `user`, `kind`, `cost`, policy `spec` and its
-- `windows`, payload or nil) ran at `now`: the lane's completion history (`done`, whose
-- entries the rule looked at are `completions`), the counters, the task's record (`fields`:
-- more of it to write in the same HSET, for a task that never was queued) and the log entry;
-- appends (id, user, slot, completed_at) to `out`.
local function complete(done, task, fields, now, out)
  local id, slot, cost = task.id, task.slot, task.cost
  if breaks_rule(task.completions, slot, now, task.windows, cost) then count('rule_violations', 1) end
  if history > 0 then
    if cost == 1 then redis.call('RPUSH', done, int(now)) else redis.call('RPUSH', done, int(now) .. '*' .. cost) end
    redis.call('LTRIM', done, -history, -1)
    redis.call('PEXPIRE', done, history_ms + 1000)
  end
  local late = now - slot
  count('completed:' .. task.kind, 1)
  count('lateness_sum_ms', late)
  for _, bound in ipairs(lateness_buckets_ms) do
    if late <= bound then count('lateness_le:' .. bound, 1) break end
  end
  local record = prefix .. KEY_TASK .. id
  table.insert(fields, 'c')
  table.insert(fields, int(now))
  redis.call('HSET', record, unpack(fields))
  redis.call('PEXPIRE', record, task_ttl)
  local entry = {'task_id', id, 'user_id', task.user, 'slot', int(slot), 'completed_at', int(now),
    'kind', task.kind, 'cost', cost, 'policy', task.spec}
  if task.payload then
    table.insert(entry, 'payload')
    table.insert(entry, task.payload)
  end
  redis.call('XADD', log_key, '*', unpack(entry))
  for _, v in ipairs({id, task.user, int(slot), int(now)}) do table.insert(out, v) end
end

-- Runs the lane's head tasks that may start at `now`, appending each completion to `out`,
-- and files the lane under the instant its next head task may start.
local function run_due(member, now, out)
  local q = prefix .. KEY_QUEUE .. member
  local done = prefix .. KEY_DONE .. member
  while true do
    local head = redis.call('LINDEX', q, 0)
    if not head then
      redis.call('ZREM', due_key, member)
      return
    end
    local slot, id = split(head)
    -- The task's user, payload, kind, cost and policy (absent: no payload, the `default`
    -- kind, 1 unit, the default policy).
    local record = redis.call('HMGET', prefix .. KEY_TASK .. id, 'u', 'p', 'k', 'w', 'l')
    local windows, cost = task_rule(record[5], record[4])
    local completions = recent_completions(done, windows)
    local at = earliest_start(completions, slot, windows, cost)
    if at > now then
      redis.call('ZADD', due_key, int(at), member)
      return
    end
    redis.call('LPOP', q)
    count('queued', -1)
    local task = {id = id, slot = slot, user = record[1] or '', kind = record[3] or DEFAULT_KIND, cost = cost,
      spec = record[5] or default_spec, windows = windows, completions = completions, payload = record[2] or nil}
    complete(done, task, {}, now, out)
  end
end

-- Wakes the drainers (a tick on their channel, spin.toml) when tasks wait but no drainer
-- holds the lease; at most once per 200 ms, so a burst of requests publishes one wake-up,
-- not one each. Publishing here saves the caller a round trip. Returns 1 if it published.
-- `waiting`: the caller knows tasks wait (it just queued one), so `due` needs no look.
local function wake_drainer(waiting)
  if redis.call('EXISTS', lease_key) == 1 or (not waiting and redis.call('ZCARD', due_key) == 0) then return 0 end
  if not redis.call('SET', kick_key, '1', 'NX', 'PX', 200) then return 0 end
  redis.call('PUBLISH', tick_channel, '')
  return 1
end

-- Admission answers are counted here rather than by another round trip from the handler,
-- per kind; metrics.rs derives the totals and the 200s and 202s they answered from them.
local function count_answer(placement, kind, n)
  count('admitted:' .. placement .. ':' .. kind, n or 1)
end

local function append(result, out)
  for _, v in ipairs(out) do table.insert(result, v) end
  return result
end

-- Files tasks of one lane (`member`: user `user`, kind `kind`; `tasks`: {id, slot, idem (''
-- for none; it then names the task for a day), payload (JSON text, '' for none), cost,
-- spec (its policy)}, in slot order; admissions can reach here in another order than they
-- committed), runs what is due now, and wakes the drainer if nobody leads. A record keeps
-- kind, cost and policy only where they differ from the defaults. Returns `['filed', now,
-- k, (status, completed_at | queue position)×k, completions…]`.
local function file_tasks(member, user, kind, now, tasks)
  local q = prefix .. KEY_QUEUE .. member
  -- Each entry: task id, queue entry, and its 1-based queue position when it went to the tail
  -- (what RPUSH answers), or false.
  local entries = {}
  -- Whether the lane's head task changed: only then can anything of it run now, or the
  -- instant it is filed under in `due` move. A task queued behind others leaves both as
  -- they were (every script that changes a head refiles the lane), so the common queued
  -- admission skips `run_due` and its half-dozen commands.
  local new_head = false
  -- Completions of tasks that ran without being queued, and how many tasks were queued.
  local ran_now, queued_now = {}, 0
  for _, task in ipairs(tasks) do
    local id, slot, idem, payload = task.id, task.slot, task.idem, task.payload
    local slot_s = int(slot)
    if idem ~= '' then redis.call('SET', idem, id, 'PX', task_ttl) end
    local fields = {'u', user, 's', slot_s}
    if payload ~= '' then table.insert(fields, 'p') table.insert(fields, payload) end
    if kind ~= DEFAULT_KIND then table.insert(fields, 'k') table.insert(fields, kind) end
    if task.cost ~= 1 then table.insert(fields, 'w') table.insert(fields, task.cost) end
    if task.spec ~= default_spec then table.insert(fields, 'l') table.insert(fields, task.spec) end
    local entry = slot_s .. ':' .. id
    local tail = redis.call('LINDEX', q, -1)
    -- With nothing queued in the lane, a task whose slot has come and that the rule allows on
    -- the lane's completions runs here and now, never entering the queue: what queueing it
    -- and `run_due` would do, without their round of commands. (An empty queue is never
    -- filed in `due`: every script that empties one removes it.)
    local runs_now = false
    if not tail and slot <= now then
      local windows = windows_of(task.spec)
      local done = prefix .. KEY_DONE .. member
      local completions = recent_completions(done, windows)
      if earliest_start(completions, slot, windows, task.cost) <= now then
        local ran = {id = id, slot = slot, user = user, kind = kind, cost = task.cost, spec = task.spec,
          windows = windows, completions = completions}
        if payload ~= '' then ran.payload = payload end
        complete(done, ran, fields, now, ran_now)
        runs_now = true
      end
    end
    local position = false
    if not runs_now then
      redis.call('HSET', prefix .. KEY_TASK .. id, unpack(fields))
      queued_now = queued_now + 1
      -- Usually the tail: insert after the last entry with a slot no later than ours.
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
    end
    table.insert(entries, {id, entry, position})
  end
  count('queued', queued_now)

  local out = {}
  if new_head then run_due(member, now, out) end
  if queued_now > 0 then wake_drainer(true) end
  -- `run_due` reports each task it ran as (id, user, slot, completed_at); all of them were
  -- ahead of any of ours it left queued.
  local ran, ran_count = {}, #out / 4
  for r = 1, #out, 4 do ran[out[r]] = out[r + 3] end
  for r = 1, #ran_now, 4 do ran[ran_now[r]] = ran_now[r + 3] end
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
  count_answer('inline', kind, inline)
  count_answer('queued', kind, queued)
  return append(append(reply, ran_now), out)
end
