-- ARGV[8..]: member, user id, task id, slot, ledger key, ledger expiry (epoch ms),
-- idempotency key ('' for none; it then names this task for a day), CAS retries so far,
-- ledger check, expected ledger, new ledger.
--
-- The commit point of admission. With the ledger check '0' (no ledger stored) or '1' (the
-- ledger must equal the expected value) this is the Redis ledger backend's compare-and-set:
-- if the ledger changed since it was read, nothing is written and the answer is
-- `['conflict', now, present, ledger]`, the ledger as it is now, so the caller retries
-- without another read. With '-' the ledger was committed in the key-value store, and only
-- its expiry is extended here.
--
-- Then it files the task in slot order (admissions can reach here in another order than
-- they committed), runs it if it is the head and may start now, and wakes the drainer if
-- nobody leads. Returns `[status, completed_at | queue position, now, completions…]`.
local member, user, id, slot_s = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local ledger_key, ledger_expire_at, idem = ARGV[12], tonumber(ARGV[13]), ARGV[14]
local retries, check, expected, new_ledger = tonumber(ARGV[15]), ARGV[16], ARGV[17], ARGV[18]
local now = now_ms()
if check ~= '-' then
  local current = redis.call('GET', ledger_key)
  if (check == '0' and current) or (check == '1' and current ~= expected) then
    count('cas_retries', 1)
    if current then return {'conflict', now, 1, current} end
    return {'conflict', now, 0, ''}
  end
  -- The ledger constrains nothing once its last slot is a minute old.
  redis.call('SET', ledger_key, new_ledger, 'PXAT', int(ledger_expire_at))
else
  count('cas_retries', retries)
  -- A SET by the key-value store clears the TTL, so only ever extend it.
  local ttl = redis.call('PTTL', ledger_key)
  if ttl == -1 or (ttl >= 0 and now + ttl < ledger_expire_at) then
    redis.call('PEXPIREAT', ledger_key, int(ledger_expire_at))
  end
end
local slot = tonumber(slot_s)
if idem ~= '' then redis.call('SET', idem, id, 'PX', task_ttl) end
local q = prefix .. 'q:' .. member
local task = prefix .. 't:' .. id
redis.call('HSET', task, 'u', user, 's', slot_s)
local entry = slot_s .. ':' .. id
local n = redis.call('LLEN', q)
local i, pivot = n - 1, nil
while i >= 0 do
  local e = redis.call('LINDEX', q, i)
  if split(e) <= slot then pivot = e break end
  i = i - 1
end
if i == n - 1 then redis.call('RPUSH', q, entry)
elseif pivot then redis.call('LINSERT', q, 'AFTER', pivot, entry)
else redis.call('LPUSH', q, entry) end
count('queued', 1)
local position = i + 2
local out = {}
if position == 1 then run_due(member, now, out) end
wake_drainer()
local completed = redis.call('HGET', task, 'c')
if completed then
  count_answer('200', 'inline')
  return append({'completed', tonumber(completed), now}, out)
end
count_answer('202', 'queued')
return append({'queued', position, now}, out)
