-- ARGV[8..]: member, idempotency key ('' for none).
-- What an admission with the `kv` ledger starts from, in one round trip: the Redis clock,
-- the user's backlog, and what an earlier request with the same Idempotency-Key left (its
-- task id, 'pending' while that request is still being admitted, '' when there was none:
-- we then reserve the key for a while, until `file.lua` names the task).
local member, idem = ARGV[8], ARGV[9]
local now = now_ms()
local backlog = redis.call('LLEN', prefix .. 'q:' .. member)
local earlier = ''
if idem ~= '' then
  earlier = redis.call('GET', idem) or ''
  if earlier == '' then redis.call('SET', idem, 'pending', 'PX', 5000) end
end
return {now, backlog, earlier}
