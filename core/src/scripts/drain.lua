-- ARGV[7..]: token, handoff token, lease TTL ms, batch size (lanes), claim limit, then the
-- outcomes of deliveries that ended, six items each (task id, attempt, result, status,
-- duration ms, Retry-After ms: `settle` in lib.lua).
-- Records those outcomes (an outcome names its attempt, whoever sends it), then runs what is
-- due for up to `batch` lanes (claiming about `claim limit` attempts at most: each waits for
-- the reply, so a small number keeps the claimed start close to the request) and retries the
-- deliveries whose claims lapsed. Every drainer in a handler does this, the leader and the
-- others (helpers) alike, except that a helper takes only lanes due for `HELP_AFTER_MS`
-- already: the leader's backlog. Runs and claims are atomic, so more claimers cost only
-- calls; under a backlog the attempts spread over the replicas, and otherwise the leader
-- sends them all (one sender's requests reach a backend with one delay, so the windows
-- hold on the backend's arrivals as on the claimed starts). A drainer winding down (claim
-- limit 0: it returns once its attempts in flight have ended) only records outcomes.
-- The lease (free, ours, or handed to us by the tick we got) elects who keeps the tick chain
-- going: the leader takes or renews it (and the alarms), and drops it (and them) when
-- nothing is due or claimed, ending the chain until an admission wakes it again.
-- Returns `['busy', holder, …]` (another drainer leads) or `[state, …]` (state `active` or
-- `idle`), then: ms until the next task is due or claim lapses, more due now?, k, completions
-- (4 items each: k of them)…, claims (8 items each: `claim` in lib.lua)….
local token, handoff = ARGV[7], ARGV[8]
local lease_ttl, batch, claim_limit = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
count('drain_calls', 1)
local now = now_ms()
local holder = redis.call('GET', lease_key)
local leading = not holder or holder == token or holder == handoff
local out, claims = {}, {}
local claiming = nil
if claim_limit > 0 then claiming = claims end
for a = 12, #ARGV, 6 do
  settle(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], now, out, claiming)
end
local HELP_AFTER_MS = 20
local members, lapsed, cut = {}, {}, false
if claiming then
  local due_by = now
  if not leading then due_by = now - HELP_AFTER_MS end
  members = redis.call('ZRANGEBYSCORE', due_key, '-inf', int(due_by), 'LIMIT', 0, batch)
  -- (Lanes left when the claims are full stay due: `more` says so.)
  for _, m in ipairs(members) do
    if #claims >= claim_limit * CLAIM_ITEMS then cut = true break end
    run_due(m, now, out, claims)
  end
  lapsed = redis.call('ZRANGEBYSCORE', claims_key, '-inf', int(now), 'LIMIT', 0, batch)
  for _, id in ipairs(lapsed) do
    local attempt = redis.call('HGET', prefix .. KEY_TASK .. id, 'a')
    if attempt then
      count('lapsed', 1)
      settle(id, attempt, 'retry', 'lapsed', '', '0', now, out, claims)
    else
      redis.call('ZREM', claims_key, id)
    end
  end
end
local next_due = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
local next_lapse = redis.call('ZRANGE', claims_key, 0, 0, 'WITHSCORES')
local more = 0
if cut or #members == batch or #lapsed == batch then more = 1 end
-- With nothing due or claimed: look again within the lease's life.
local next_in = lease_ttl
if #next_due > 0 or #next_lapse > 0 then
  local next_at = math.huge
  if #next_due > 0 then next_at = tonumber(next_due[2]) end
  if #next_lapse > 0 then next_at = math.min(next_at, tonumber(next_lapse[2])) end
  next_in = math.max(0, next_at - now)
end
local state = 'active'
if not leading then
  state = 'busy'
elseif #next_due == 0 and #next_lapse == 0 then
  -- The chain stops, and the wake-up that started it is spent: the next task queued must
  -- wake it at once. Left to run out, the kick's 200 ms throttle (`wake_drainer`) swallowed
  -- that wake-up when the chain went idle within 200 ms of it (a backend answering in a few
  -- ms, before the burst's next task was queued), and the queued tasks waited for the next
  -- request (e2e deliveries, 1 run in 12 under load, 2026-12-05).
  redis.call('DEL', lease_key, kick_key)
  for i = 1, #alarm_seconds do redis.call('DEL', alarm_key(i)) end
  state = 'idle'
else
  redis.call('SET', lease_key, token, 'PX', lease_ttl)
  -- The alarms go off only once no leader has renewed them for their lifetime: every
  -- replica stopped with work left. Renewed about once a second (the shortest has a few
  -- seconds), not on every call, so that a Redis reporting every write on their channels
  -- wakes the drainers rarely.
  if redis.call('PTTL', alarm_key(1)) < alarm_seconds[1] * 1000 - 1000 then arm_alarms() end
end
local head = {state, next_in, more, #out / 4}
if state == 'busy' then head = {state, holder, next_in, more, #out / 4} end
return append(append(head, out), claims)
