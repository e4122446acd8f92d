-- ARGV[7..]: member (the lane), idempotency key ('' for none), most tasks queued per lane
-- (0 = no limit), the user's tier key ('' when no tier overrides the task's kind).
-- What an admission with the `kv` ledger starts from, in one round trip: the Redis clock,
-- what an earlier request with the same Idempotency-Key left (its task id, 'pending' while
-- that request is still being admitted, '' when there was none), and whether the user's
-- queue is full (1/0, only when there was no earlier request), and the user's tier ('' for
-- the built-in one). With no earlier request and room, the key is reserved for a while, until
-- `file.lua` names the task.
local member, idem, max_backlog, tier_key = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local now = now_ms()
local tier = ''
if tier_key ~= '' then tier = redis.call('GET', tier_key) or '' end
local earlier = ''
if idem ~= '' then earlier = redis.call('GET', idem) or '' end
if earlier ~= '' then return {now, 0, earlier, tier} end
if backlog_full(member, max_backlog) then return {now, 1, '', tier} end
if idem ~= '' then redis.call('SET', idem, 'pending', 'PX', 5000) end
return {now, 0, '', tier}
