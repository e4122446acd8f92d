-- ARGV[7..]: token, handoff token, lease TTL ms, batch size (lanes), claim limit, then the
-- outcomes of deliveries that ended, six items each (task id, attempt, result, status,
-- duration ms, Retry-After ms: `settle` in lib.lua).
-- Records those outcomes (whoever leads: an outcome names its attempt), then takes or renews
-- the lease (free, ours, or handed to us by the tick we got), runs what is due for up to
-- `batch` lanes (claiming about `claim limit` attempts at most: each waits for the reply, so
-- a small number keeps the claimed start close to the request), retries the deliveries whose claims lapsed, and answers when the next task
-- is due or the next claim lapses. With neither it drops the lease, ending the tick chain
-- until an admission wakes it again.
-- Returns `['busy', holder, k, completions…]` or `[state, ms until next due, more due now?, k,
-- completions (4 items each: k of them)…, claims (8 items each: `claim` in lib.lua)…]`.
local token, handoff = ARGV[7], ARGV[8]
local lease_ttl, batch, claim_limit = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
count('drain_calls', 1)
local now = now_ms()
local holder = redis.call('GET', lease_key)
local leading = not holder or holder == token or holder == handoff
local out, claims = {}, {}
-- A drainer that no longer leads still records what it delivered, but claims nothing more.
local claiming = nil
if leading then claiming = claims end
for a = 12, #ARGV, 6 do
  settle(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], now, out, claiming)
end
if not leading then return append({'busy', holder, #out / 4}, out) end
local members = redis.call('ZRANGEBYSCORE', due_key, '-inf', int(now), 'LIMIT', 0, batch)
-- (Lanes left when the claims are full stay due: `more` says so.)
local cut = false
for _, m in ipairs(members) do
  if #claims >= claim_limit * CLAIM_ITEMS then cut = true break end
  run_due(m, now, out, claims)
end
local lapsed = redis.call('ZRANGEBYSCORE', claims_key, '-inf', int(now), 'LIMIT', 0, batch)
for _, id in ipairs(lapsed) do
  local attempt = redis.call('HGET', prefix .. KEY_TASK .. id, 'a')
  if attempt then
    count('lapsed', 1)
    settle(id, attempt, 'retry', 'lapsed', '', '0', now, out, claims)
  else
    redis.call('ZREM', claims_key, id)
  end
end
local next_due = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
local next_lapse = redis.call('ZRANGE', claims_key, 0, 0, 'WITHSCORES')
if #next_due == 0 and #next_lapse == 0 then
  redis.call('DEL', lease_key)
  return append(append({'idle', 0, 0, #out / 4}, out), claims)
end
local next_at = math.huge
if #next_due > 0 then next_at = tonumber(next_due[2]) end
if #next_lapse > 0 then next_at = math.min(next_at, tonumber(next_lapse[2])) end
redis.call('SET', lease_key, token, 'PX', lease_ttl)
local more = 0
if cut or #members == batch or #lapsed == batch then more = 1 end
return append(append({'active', math.max(0, next_at - now), more, #out / 4}, out), claims)
