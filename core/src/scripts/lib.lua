-- Shared by every script (scripts.rs puts it before the scripts' bodies, after what it takes
-- from Rust: the key words `KEY_*` of keys.rs, `DEFAULT_KIND`, the histograms' buckets and
-- `alarm_seconds`): the configuration, and the functions that run tasks. Loaded once
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
-- Deliveries in flight: every open claim (task id, scored by when it lapses), and how many
-- each lane has.
local claims_key, in_flight_key

-- A worker's claim call (pull.lua) sets this for the call: `{token = <the call's nonce>,
-- cap = <claims it takes at most>}`; nil in every other script.
local puller

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
  claims_key, in_flight_key = prefix .. KEY_CLAIMS, prefix .. KEY_IN_FLIGHT
  counted = {}
  puller = nil
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

-- Whether the lane's queue already holds `max_backlog` tasks (0: no limit; the API's 429).
local function backlog_full(member, max_backlog)
  return max_backlog > 0 and redis.call('LLEN', prefix .. KEY_QUEUE .. member) >= max_backlog
end

-- A start of `task` (see `complete`) at `now`, as the windows count it: checked by the
-- independent witness, added to the lane's history (`done`) and to the lateness histogram.
local function start(done, task, now)
  local cost = task.cost
  if breaks_rule(task.completions, task.slot, now, task.windows, cost) then count('rule_violations', 1) end
  if history > 0 then
    if cost == 1 then redis.call('RPUSH', done, int(now)) else redis.call('RPUSH', done, int(now) .. '*' .. cost) end
    redis.call('LTRIM', done, -history, -1)
    redis.call('PEXPIRE', done, history_ms + 1000)
  end
  local late = now - task.slot
  count('lateness_sum_ms', late)
  for _, bound in ipairs(lateness_buckets_ms) do
    if late <= bound then count('lateness_le:' .. bound, 1) break end
  end
end

-- The log entry of `task` ended at `now` (its completion, or a delivery attempt's end), with
-- `extra` fields (a delivery's attempt).
local function log_entry(task, now, extra)
  local entry = {'task_id', task.id, 'user_id', task.user, 'slot', int(task.slot), 'completed_at', int(now),
    'kind', task.kind, 'cost', task.cost, 'policy', task.spec}
  for _, v in ipairs(extra) do table.insert(entry, v) end
  if task.payload then
    table.insert(entry, 'payload')
    table.insert(entry, task.payload)
  end
  redis.call('XADD', log_key, '*', unpack(entry))
end

-- Records that task `id` (slot `slot`, of `user`, `kind`, `cost`, policy `spec` and its
-- `windows`, payload or nil) ran at `now`: the lane's completion history (`done`, whose
-- entries the rule looked at are `completions`), the counters, the task's record (`fields`:
-- more of it to write in the same HSET, for a task that never was queued) and the log entry;
-- appends (id, user, slot, completed_at) to `out`.
local function complete(done, task, fields, now, out)
  start(done, task, now)
  count('completed:' .. task.kind, 1)
  local record = prefix .. KEY_TASK .. task.id
  table.insert(fields, 'c')
  table.insert(fields, int(now))
  redis.call('HSET', record, unpack(fields))
  redis.call('PEXPIRE', record, task_ttl)
  log_entry(task, now, {})
  for _, v in ipairs({task.id, task.user, int(task.slot), int(now)}) do table.insert(out, v) end
end

-- Deliveries (delivery.rs). A task whose record has `d` ('<timeout ms>/<attempts>/<concurrency>',
-- then '/pull' for a kind workers pull: `Delivery::spec`) is not run here but **claimed**: at
-- its start the drainer gets it to deliver (or, pulled, a worker's claim call gets it), the
-- start counts in the lane's history as a completion does, and the claim stays open (in
-- `claims` and the lane's `inflight` count) until `settle` records the outcome, or until it
-- lapses (timeout + `CLAIM_MARGIN_MS`) and is retried. A pulled lane waits in its kind's
-- `pull:<kind>` set, not in `due`: only workers claim from it.
local CLAIM_MARGIN_MS = 5000
-- A failed attempt's retry waits 1 s, doubling with each attempt, at most an hour (or the
-- backend's Retry-After when later).
local BACKOFF_FIRST_MS, BACKOFF_MAX_MS = 1000, 3600000

local parsed_deliveries = {}
local function delivery_of(spec)
  local delivery = parsed_deliveries[spec]
  if not delivery then
    local timeout, attempts, concurrency, rest = string.match(spec, '^(%d+)/(%d+)/(%d+)(.*)$')
    delivery = {timeout = tonumber(timeout), attempts = tonumber(attempts), concurrency = tonumber(concurrency),
      pull = rest == '/pull'}
    parsed_deliveries[spec] = delivery
  end
  return delivery
end

-- Claims `task` (taken from the head of lane `member`) at `now`: its next attempt starts.
-- Appends (id, user, kind, cost, attempt, slot, started_at, payload or '', claim token ('' for
-- the drainer's), deadline) to `claims`: `CLAIM_ITEMS` items. A worker's claim has a token,
-- which its outcome must bring back (`settle`), and a deadline (its start plus the kind's
-- timeout); either claim lapses `CLAIM_MARGIN_MS` after its deadline.
local CLAIM_ITEMS = 10
local function claim(member, done, task, now, claims)
  start(done, task, now)
  local record = prefix .. KEY_TASK .. task.id
  local attempt = redis.call('HINCRBY', record, 'a', 1)
  local token, deadline = '', now + task.delivery.timeout
  if puller then
    token = puller.token .. '.' .. (#claims / CLAIM_ITEMS + 1)
    redis.call('HSET', record, 'r', int(now), 'm', member, 't', token)
  else
    redis.call('HSET', record, 'r', int(now), 'm', member)
  end
  redis.call('ZADD', claims_key, int(deadline + CLAIM_MARGIN_MS), task.id)
  redis.call('HINCRBY', in_flight_key, member, 1)
  count('claimed:' .. task.kind, 1)
  for _, v in ipairs({task.id, task.user, task.kind, task.cost, attempt, int(task.slot), int(now), task.payload or '',
      token, int(deadline)}) do
    table.insert(claims, v)
  end
end

-- Rings kind `kind`'s bell: one worker waiting in a long poll (`BLPOP` on the bell,
-- claims.rs) wakes to look again. A `BLPOP` takes one ring, so each ring wakes one waiter.
local BELLS_KEPT, BELL_TTL_MS = 16, 60000
local function ring(kind)
  local bell = prefix .. KEY_BELL .. kind
  redis.call('LPUSH', bell, '1')
  redis.call('LTRIM', bell, 0, BELLS_KEPT - 1)
  redis.call('PEXPIRE', bell, BELL_TTL_MS)
end

-- Files pulled lane `member` (kind `kind`) under `at`, the instant its head may start, for
-- the workers' claims, and rings the kind's bell when the lane is due now (a waiter takes
-- it) or is the kind's new soonest (the waiters' timers are set for a later one).
local function file_pulled(member, kind, at, now)
  local pulled = prefix .. KEY_PULL .. kind
  redis.call('ZREM', due_key, member)
  redis.call('ZADD', pulled, int(at), member)
  if at <= now or redis.call('ZRANGE', pulled, 0, 0)[1] == member then ring(kind) end
end

-- Whether lane `member` already has `delivery.concurrency` attempts in flight.
local function lane_busy(member, delivery)
  return delivery.concurrency > 0 and tonumber(redis.call('HGET', in_flight_key, member) or 0) >= delivery.concurrency
end

-- An admission whose task is to be delivered and may start now starts its first attempt
-- itself (`start_at_admission`), and the HTTP handler that admitted it delivers it after
-- answering, rather than filing it for a drainer's next call: in a burst the drainers run
-- behind, and every later task of the lane inherits how late the first started. Such an
-- attempt holds its Spin instance until it ends, so at most `ADMISSION_STARTS_MAX`
-- (delivery.rs) are in flight at once across the replicas; past it, admissions file their
-- tasks for the drainers as before.
--
-- The count expires a while after the last start (longer than any attempt's claim), so that
-- a count left wrong (a record removed before its outcome) mends itself.
local ADMISSION_STARTS_TTL_MS = 120000

-- `task` (being filed by `file_tasks` in lane `member` of `user` and `kind`) as the executor
-- takes it, and the lane's history (`done`), if the rule allows it to start at `now` on that
-- history; nil otherwise.
local function startable(member, user, kind, task, now)
  local windows = windows_of(task.spec)
  local done = prefix .. KEY_DONE .. member
  local completions = recent_completions(done, windows)
  if earliest_start(completions, task.slot, windows, task.cost) > now then return nil end
  local ready = {id = task.id, slot = task.slot, user = user, kind = kind, cost = task.cost, spec = task.spec,
    windows = windows, completions = completions}
  if task.payload ~= '' then ready.payload = task.payload end
  return ready, done
end

-- Starts the first attempt of `task` (being filed by `file_tasks`, with its record's `fields`)
-- at `now`, and returns true, if its kind is delivered rather than pulled, its lane has a
-- place (`concurrency`), the rule allows a start now on the lane's history, and fewer than
-- `ADMISSION_STARTS_MAX` admissions' attempts are in flight: writes the record (marked `o`,
-- which `settle` counts off) and claims it into `claims`.
local function start_at_admission(member, user, kind, task, fields, now, claims)
  local delivery = delivery_of(task.delivery)
  if delivery.pull or lane_busy(member, delivery) then return false end
  local started = prefix .. KEY_STARTED
  if tonumber(redis.call('GET', started) or 0) >= ADMISSION_STARTS_MAX then return false end
  local ready, done = startable(member, user, kind, task, now)
  if not ready then return false end
  table.insert(fields, 'o')
  table.insert(fields, '1')
  redis.call('HSET', prefix .. KEY_TASK .. task.id, unpack(fields))
  redis.call('INCR', started)
  redis.call('PEXPIRE', started, ADMISSION_STARTS_TTL_MS)
  ready.delivery = delivery
  claim(member, done, ready, now, claims)
  return true
end

-- Files lane `member` under the instant its head task may start by the rule on its
-- completions (for the drainer, or for the workers when pulled), or takes it out of both
-- when it is empty: after its head changed without running anything (a cancel, at `now`).
local function refile(member, now)
  local head = redis.call('LINDEX', prefix .. KEY_QUEUE .. member, 0)
  local sep = string.find(member, ':', 1, true)
  local lane_kind = sep and string.sub(member, sep + 1) or DEFAULT_KIND
  if not head then
    redis.call('ZREM', due_key, member)
    redis.call('ZREM', prefix .. KEY_PULL .. lane_kind, member)
    return
  end
  local slot, id = split(head)
  local record = redis.call('HMGET', prefix .. KEY_TASK .. id, 'l', 'w', 'd')
  local windows, cost = task_rule(record[1], record[2])
  local at = earliest_start(recent_completions(prefix .. KEY_DONE .. member, windows), slot, windows, cost)
  if record[3] and delivery_of(record[3]).pull then
    file_pulled(member, lane_kind, at, now)
  else
    redis.call('ZADD', due_key, int(at), member)
  end
end

-- Runs the lane's head tasks that may start at `now`, appending each completion to `out`,
-- and files the lane under the instant its next head task may start. A head to deliver is
-- claimed into `claims` (only the drainer passes it: it delivers them); without `claims`
-- it is filed under its start, for the drainer. A pulled head is claimed only by a worker's
-- call (`puller`, with its `claims`), up to its cap; otherwise it is filed for the workers.
local function run_due(member, now, out, claims)
  local q = prefix .. KEY_QUEUE .. member
  local done = prefix .. KEY_DONE .. member
  -- The kind of a pulled task claimed here: its lane, emptied, leaves the kind's set.
  local pulled_kind = nil
  while true do
    local head = redis.call('LINDEX', q, 0)
    if not head then
      redis.call('ZREM', due_key, member)
      if pulled_kind then redis.call('ZREM', prefix .. KEY_PULL .. pulled_kind, member) end
      return
    end
    local slot, id = split(head)
    -- The task's user, payload, kind, cost and policy (absent: no payload, the `default`
    -- kind, 1 unit, the default policy).
    local record = redis.call('HMGET', prefix .. KEY_TASK .. id, 'u', 'p', 'k', 'w', 'l', 'd')
    local windows, cost = task_rule(record[5], record[4])
    local completions = recent_completions(done, windows)
    local at = earliest_start(completions, slot, windows, cost)
    local delivery = record[6] and delivery_of(record[6])
    local kind = record[3] or DEFAULT_KIND
    if delivery and delivery.pull then
      if at > now or not (puller and claims) or #claims >= puller.cap * CLAIM_ITEMS then
        file_pulled(member, kind, at, now)
        return
      end
      pulled_kind = kind
    elseif at > now or (delivery and (puller or not claims)) then
      redis.call('ZADD', due_key, int(at), member)
      return
    end
    if delivery and lane_busy(member, delivery) then
      -- No free place: the outcome that frees one files the lane again (`settle`). A lane
      -- is filed in one set: the workers' when pulled, the drainer's otherwise.
      if delivery.pull then
        redis.call('ZREM', prefix .. KEY_PULL .. kind, member)
      else
        redis.call('ZREM', due_key, member)
      end
      return
    end
    redis.call('LPOP', q)
    count('queued', -1)
    local task = {id = id, slot = slot, user = record[1] or '', kind = kind, cost = cost,
      spec = record[5] or default_spec, windows = windows, completions = completions, payload = record[2] or nil,
      delivery = delivery}
    if delivery then claim(member, done, task, now, claims) else complete(done, task, {}, now, out) end
  end
end

-- The key of the drainers' `i`th alarm (keys.rs `ALARM_SECONDS`, `alarm_seconds` here,
-- shortest first). Built when needed, not in `configure`: most calls never touch them.
local function alarm_key(i)
  return prefix .. KEY_ALARM .. alarm_seconds[i]
end

-- Sets the drainers' alarms to go off their lifetimes from now, unless renewed (drain.lua)
-- or deleted (a chain gone idle) before.
local function arm_alarms()
  for i, s in ipairs(alarm_seconds) do redis.call('SET', alarm_key(i), '1', 'PX', s * 1000) end
end

-- Wakes the drainers (a tick on their channel, spin.toml) when tasks wait but no drainer
-- holds the lease; at most once per 200 ms, so a burst of requests publishes one wake-up,
-- not one each (a chain going idle ends the 200 ms early: drain.lua). Publishing here saves
-- the caller a round trip. Returns 0 (none needed, or one went out within the 200 ms), 1 (a
-- replica heard it) or 2 (none did: sweep.rs `Wake`).
-- `waiting`: the caller knows tasks wait (it just queued one), so `due` needs no look.
local function wake_drainer(waiting)
  if redis.call('EXISTS', lease_key) == 1 then return 0 end
  -- (An open claim with no drainer: its holder died, and someone must see it lapse.)
  if not waiting and redis.call('ZCARD', due_key) == 0 and redis.call('ZCARD', claims_key) == 0 then return 0 end
  if not redis.call('SET', kick_key, '1', 'NX', 'PX', 200) then return 0 end
  -- A wake-up no replica heard (Spin serves HTTP before its Redis trigger has subscribed)
  -- holds back nothing: the next caller publishes again, an admission's handler does so
  -- after answering (admission.rs `Outcome::Admitted`), and should nobody call, the alarms
  -- wake the replicas that have subscribed by then.
  if redis.call('PUBLISH', tick_channel, '') == 0 then
    redis.call('DEL', kick_key)
    arm_alarms()
    return 2
  end
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

-- Puts queue entry `entry` (slot `slot`) into queue `q` (whose last entry is `tail`, or nil)
-- after the last entry with a slot no later than its own: usually the tail. Returns its
-- 1-based position when it went to the tail (what RPUSH answers) or false, and whether it
-- is the new head.
local function enqueue(q, tail, entry, slot)
  if not tail or split(tail) <= slot then
    local position = redis.call('RPUSH', q, entry)
    return position, position == 1
  end
  local i = redis.call('LLEN', q) - 2
  while i >= 0 do
    local e = redis.call('LINDEX', q, i)
    if split(e) <= slot then
      redis.call('LINSERT', q, 'AFTER', e, entry)
      return false, false
    end
    i = i - 1
  end
  redis.call('LPUSH', q, entry)
  return false, true
end

-- Files tasks of one lane (`member`: user `user`, kind `kind`; `tasks`: {id, slot, idem (''
-- for none; it then names the task for a day), payload (JSON text, '' for none), cost,
-- spec (its policy), delivery (`Delivery::spec`, '' for none)}, in slot order; admissions
-- can reach here in another order than they committed), runs what is due now, starts a
-- task to deliver that may start now when the caller delivers it (`claims`: admit.lua's),
-- and wakes the drainer if nobody leads (it also watches the claims lapse). A record keeps
-- kind, cost and policy only where they differ from the defaults. Returns `['filed', now,
-- unheard (1: its wake-up reached no replica), k, (status, completed_at | queue position |
-- started_at)×k, n, completions×n, claims…]`.
local function file_tasks(member, user, kind, now, tasks, claims)
  local q = prefix .. KEY_QUEUE .. member
  -- Each entry: task id, queue entry, and its 1-based queue position when it went to the tail
  -- (what RPUSH answers), or false.
  local entries = {}
  -- Whether the lane's head task changed: only then can anything of it run now, or the
  -- instant it is filed under in `due` move. A task queued behind others leaves both as
  -- they were (every script that changes a head refiles the lane), so the common queued
  -- admission skips `run_due` and its half-dozen commands.
  local new_head = false
  -- Completions of tasks that ran without being queued, how many tasks were queued, and
  -- the ids of those whose first attempt started here.
  local ran_now, queued_now, started_now = {}, 0, {}
  for _, task in ipairs(tasks) do
    local id, slot, idem, payload = task.id, task.slot, task.idem, task.payload
    local slot_s = int(slot)
    if idem ~= '' then redis.call('SET', idem, id, 'PX', task_ttl) end
    local fields = {'u', user, 's', slot_s}
    if payload ~= '' then table.insert(fields, 'p') table.insert(fields, payload) end
    if kind ~= DEFAULT_KIND then table.insert(fields, 'k') table.insert(fields, kind) end
    if task.cost ~= 1 then table.insert(fields, 'w') table.insert(fields, task.cost) end
    if task.spec ~= default_spec then table.insert(fields, 'l') table.insert(fields, task.spec) end
    if task.delivery ~= '' then table.insert(fields, 'd') table.insert(fields, task.delivery) end
    local entry = slot_s .. ':' .. id
    local tail = redis.call('LINDEX', q, -1)
    -- With nothing queued in the lane, a task whose slot has come and that the rule allows on
    -- the lane's completions runs here and now, never entering the queue: what queueing it
    -- and `run_due` would do, without their round of commands. (An empty queue is never
    -- filed in `due`: every script that empties one removes it.)
    local runs_now = false
    if not tail and slot <= now and task.delivery ~= '' then
      if claims and start_at_admission(member, user, kind, task, fields, now, claims) then
        started_now[id] = true
        runs_now = true
      end
    elseif not tail and slot <= now then
      local ready, done = startable(member, user, kind, task, now)
      if ready then
        complete(done, ready, fields, now, ran_now)
        runs_now = true
      end
    end
    local position = false
    if not runs_now then
      redis.call('HSET', prefix .. KEY_TASK .. id, unpack(fields))
      queued_now = queued_now + 1
      local head
      position, head = enqueue(q, tail, entry, slot)
      new_head = new_head or head
    end
    table.insert(entries, {id, entry, position})
  end
  count('queued', queued_now)

  local out = {}
  if new_head then run_due(member, now, out) end
  local woke = (queued_now > 0 or next(started_now)) and wake_drainer(true) or 0
  -- `run_due` reports each task it ran as (id, user, slot, completed_at); all of them were
  -- ahead of any of ours it left queued.
  local ran, ran_count = {}, #out / 4
  for r = 1, #out, 4 do ran[out[r]] = out[r + 3] end
  for r = 1, #ran_now, 4 do ran[ran_now[r]] = ran_now[r + 3] end
  local inline, queued = 0, 0
  local reply = {'filed', now, woke == 2 and 1 or 0, #entries}
  for _, e in ipairs(entries) do
    local completed = ran[e[1]]
    if completed then
      inline = inline + 1
      table.insert(reply, 'completed')
      table.insert(reply, tonumber(completed))
    elseif started_now[e[1]] then
      -- (Answered 202, as a queued task is.)
      queued = queued + 1
      table.insert(reply, 'running')
      table.insert(reply, now)
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
  table.insert(reply, #ran_now / 4 + #out / 4)
  return append(append(append(reply, ran_now), out), claims or {})
end

-- A lane's ledger as ledger.rs `Ledger` writes it ('v1 <seq>', then ' <slot>:<tag>' per
-- entry, '*<cost>' after the tag when it is not 1, oldest first): its sequence number and
-- its entries' slots and costs, or nil for a foreign value.
local function read_ledger(stored)
  if not stored then return 0, {}, {}, {} end
  local seq, rest = string.match(stored, '^v1 (%d+)(.*)$')
  if not seq then return nil end
  local slots, costs, texts = {}, {}, {}
  for text in string.gmatch(rest, '%S+') do
    local t, c = string.match(text, '^(%-?%d+):%w*%*?(%d*)$')
    if not t then return nil end
    slots[#slots + 1] = tonumber(t)
    costs[#slots] = tonumber(c) or 1
    texts[#slots] = text
  end
  return tonumber(seq), slots, costs, texts
end

-- Admits `task` again to lane `member` from `at`, as admit.lua admits a new task: its slot
-- by the rule on the lane's ledger, so behind every slot already promised, and queued there.
-- A retry is a start the windows count like any other. Returns the slot.
local function readmit(member, task, at)
  local ledger_key = prefix .. KEY_LEDGER .. member
  local seq, slots, costs, texts = read_ledger(redis.call('GET', ledger_key))
  -- (A foreign ledger is replaced: the lane's start history still holds every start to the rule.)
  if not seq then seq, slots, costs, texts = 0, {}, {}, {} end
  local n = #slots
  local slot = earliest(at, windows_of(task.spec), task.cost, function(k)
    if k <= n then return slots[n - k + 1], costs[n - k + 1] end
  end)
  local parts = {'v1 ' .. int(seq + 1)}
  for i = math.max(1, n - math.max(history, 1) + 2), n do table.insert(parts, texts[i]) end
  local own = int(slot) .. ':' .. string.sub(task.id, 1, 12)
  if task.cost ~= 1 then own = own .. '*' .. task.cost end
  table.insert(parts, own)
  redis.call('SET', ledger_key, table.concat(parts, ' '), 'PXAT', int(slot + history_ms + 1000))
  local q = prefix .. KEY_QUEUE .. member
  -- (If it is the new head, the caller's `run_due` files the lane.)
  enqueue(q, redis.call('LINDEX', q, -1), int(slot) .. ':' .. task.id, slot)
  count('queued', 1)
  return slot
end

-- Records how attempt `attempt` (text) of task `id` ended at `now`: `result` 'ok' (a 2xx),
-- 'retry' (408, 429, 5xx, a timeout, a connection error, a lapsed claim) or 'fail' (any other
-- answer); `status` the HTTP status, the error's name, or a worker's result as 'w:<result>';
-- `duration` ms ('' for none); `retry_after` the backend's (or worker's) Retry-After in ms
-- ('0' for none); `detail` a worker's detail (JSON text) or nil. An outcome for an attempt
-- whose claim is no longer open (it lapsed and was retried) is stale and changes nothing.
-- The task completes (its log entry, and (id, user, slot, completed_at) to `out`), is
-- admitted again (`readmit`), or fails after its last attempt; then its lane, one attempt
-- fewer in flight, is run again (`run_due`, with `claims`).
local function settle(id, attempt, result, status, duration, retry_after, now, out, claims, detail)
  local key = prefix .. KEY_TASK .. id
  local r = redis.call('HMGET', key, 'u', 's', 'k', 'w', 'l', 'd', 'a', 'm', 'r', 'p', 'h', 'o')
  if not r[9] or r[7] ~= attempt then
    count('stale_outcomes', 1)
    return
  end
  local member, started, n = r[8], tonumber(r[9]), tonumber(attempt)
  redis.call('ZREM', claims_key, id)
  if redis.call('HINCRBY', in_flight_key, member, -1) <= 0 then redis.call('HDEL', in_flight_key, member) end
  redis.call('HDEL', key, 'r', 't')
  if r[12] then
    -- An attempt an admission started (`start_at_admission`): one fewer in flight.
    local started = prefix .. KEY_STARTED
    if redis.call('DECR', started) <= 0 then redis.call('DEL', started) end
    redis.call('HDEL', key, 'o')
  end
  local task = {id = id, slot = tonumber(r[2]), user = r[1] or '', kind = r[3] or DEFAULT_KIND,
    cost = tonumber(r[4]) or 1, spec = r[5] or default_spec, payload = r[10] or nil}
  -- The record keeps every attempt: '<started>,<status or error>,<duration ms>', ';' between.
  local line = int(started) .. ',' .. status .. ',' .. duration
  local attempts = line
  if r[11] then attempts = r[11] .. ';' .. line end
  local extra = {'started_at', int(started), 'attempt', attempt}
  local worker_result = string.match(status, '^w:(.*)$')
  if tonumber(status) then
    table.insert(extra, 'status')
    table.insert(extra, status)
  elseif worker_result then
    table.insert(extra, 'result')
    table.insert(extra, worker_result)
  else
    table.insert(extra, 'error')
    table.insert(extra, status)
  end
  if status == 'lapsed' then count('lapsed:' .. task.kind, 1) end
  if detail then
    table.insert(extra, 'detail')
    table.insert(extra, detail)
    redis.call('HSET', key, 'y', detail)
  elseif worker_result then
    -- (The record shows the last outcome's detail: none this time.)
    redis.call('HDEL', key, 'y')
  end
  if duration ~= '' then
    table.insert(extra, 'duration_ms')
    table.insert(extra, duration)
    local ms = tonumber(duration)
    count('delivery_count:' .. task.kind, 1)
    count('delivery_sum_ms:' .. task.kind, ms)
    for _, bound in ipairs(delivery_buckets_ms) do
      if ms <= bound then count('delivery_le:' .. bound .. ':' .. task.kind, 1) break end
    end
  end
  if result == 'ok' then
    redis.call('HSET', key, 'h', attempts, 'c', int(now))
    redis.call('PEXPIRE', key, task_ttl)
    count('completed:' .. task.kind, 1)
    count('delivered:' .. task.kind, 1)
    log_entry(task, now, extra)
    for _, v in ipairs({id, task.user, int(task.slot), int(now)}) do table.insert(out, v) end
  elseif result == 'retry' and n < delivery_of(r[6]).attempts then
    table.insert(extra, 'outcome')
    table.insert(extra, 'retry')
    log_entry(task, now, extra)
    local backoff = math.min(BACKOFF_FIRST_MS * 2 ^ (n - 1), BACKOFF_MAX_MS)
    local slot = readmit(member, task, now + math.max(backoff, tonumber(retry_after) or 0))
    redis.call('HSET', key, 'h', attempts, 's', int(slot))
    count('retried:' .. task.kind, 1)
  else
    table.insert(extra, 'outcome')
    table.insert(extra, 'failed')
    log_entry(task, now, extra)
    redis.call('HSET', key, 'h', attempts, 'f', int(now))
    redis.call('PEXPIRE', key, task_ttl)
    count('failed:' .. task.kind, 1)
  end
  run_due(member, now, out, claims)
end
