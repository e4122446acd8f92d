-- ARGV[7..]: token, handoff token, lease TTL ms, batch size.
-- Takes or renews the lease (free, ours, or handed to us by the tick we got), runs what is
-- due for up to `batch` users, and answers when the next task is due. With nothing queued
-- it drops the lease, ending the tick chain until an admission wakes it again.
-- Returns `['busy', holder]` or `[state, ms until next due, more due now?, completions…]`.
local token, handoff = ARGV[7], ARGV[8]
local lease_ttl, batch = tonumber(ARGV[9]), tonumber(ARGV[10])
count('drain_calls', 1)
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
