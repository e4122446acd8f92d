-- ARGV[8..]: member, idempotency key ('' for none), ledger key ('' when the ledger is kept
-- in the key-value store instead).
-- What admission starts from, in one round trip: the Redis clock, the user's backlog, what
-- an earlier request with the same Idempotency-Key left (its task id, 'pending' while that
-- request is still being admitted, '' when there was none: we then reserve the key for a
-- while), and the user's ledger (present?, value).
local member, idem, ledger_key = ARGV[8], ARGV[9], ARGV[10]
local now = now_ms()
local backlog = redis.call('LLEN', prefix .. 'q:' .. member)
local earlier = ''
if idem ~= '' then
  earlier = redis.call('GET', idem) or ''
  if earlier == '' then redis.call('SET', idem, 'pending', 'PX', 5000) end
end
local ledger = false
if ledger_key ~= '' then ledger = redis.call('GET', ledger_key) end
if ledger then return {now, backlog, earlier, 1, ledger} end
return {now, backlog, earlier, 0, ''}
