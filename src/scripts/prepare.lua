-- ARGV[8..]: member, idempotency key ('' for none), most tasks queued per user (0 = no
-- limit).
-- What an admission with the `kv` ledger starts from, in one round trip: the Redis clock,
-- what an earlier request with the same Idempotency-Key left (its task id, 'pending' while
-- that request is still being admitted, '' when there was none), and whether the user's
-- queue is full (1/0, only when there was no earlier request). With none and room, the key
-- is reserved for a while, until `file.lua` names the task.
local member, idem, max_backlog = ARGV[8], ARGV[9], tonumber(ARGV[10])
local now = now_ms()
local earlier = ''
if idem ~= '' then earlier = redis.call('GET', idem) or '' end
if earlier ~= '' then return {now, 0, earlier} end
if backlog_full(member, max_backlog) then return {now, 1, ''} end
if idem ~= '' then redis.call('SET', idem, 'pending', 'PX', 5000) end
return {now, 0, ''}
