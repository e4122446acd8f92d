-- ARGV[8..]: member, user id, ledger key, ledger expiry (epoch ms), CAS retries so far,
-- ledger check, expected ledger, new ledger, then for each task of the batch (in slot
-- order): task id, slot, idempotency key ('' for none; it then names the task for a day),
-- payload (its JSON text, '' for none: JSON text is never empty).
--
-- The commit point of admission, for one or more tasks of one user. With the ledger check
-- '0' (no ledger stored) or '1' (the ledger must equal the expected value) this is the
-- Redis ledger backend's compare-and-set: if the ledger changed since it was read, nothing
-- is written and the answer is `['conflict', now, present, ledger]`, the ledger as it is
-- now, so the caller retries without another read. With '-' the ledger was committed in
-- the key-value store, and only its expiry is extended here.
--
-- Then it files each task in slot order (admissions can reach here in another order than
-- they committed), runs what is due now, and wakes the drainer if nobody leads. Returns
-- `['filed', now, k, (status, completed_at | queue position)×k, completions…]`.
local member, user, ledger_key = ARGV[8], ARGV[9], ARGV[10]
local ledger_expire_at, retries = tonumber(ARGV[11]), tonumber(ARGV[12])
local check, expected, new_ledger = ARGV[13], ARGV[14], ARGV[15]
local first_task = 16
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

local q = prefix .. 'q:' .. member
local entries = {}
for a = first_task, #ARGV, 4 do
  local id, slot_s, idem, payload = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local slot = tonumber(slot_s)
  if idem ~= '' then redis.call('SET', idem, id, 'PX', task_ttl) end
  if payload ~= '' then
    redis.call('HSET', prefix .. 't:' .. id, 'u', user, 's', slot_s, 'p', payload)
  else
    redis.call('HSET', prefix .. 't:' .. id, 'u', user, 's', slot_s)
  end
  local entry = slot_s .. ':' .. id
  -- Insert after the last entry with a slot no later than ours (usually the tail).
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
  table.insert(entries, {id, entry})
end

local out = {}
run_due(member, now, out)
wake_drainer()
local reply = {'filed', now, #entries}
for _, e in ipairs(entries) do
  local completed = redis.call('HGET', prefix .. 't:' .. e[1], 'c')
  if completed then
    count_answer('200', 'inline')
    table.insert(reply, 'completed')
    table.insert(reply, tonumber(completed))
  else
    count_answer('202', 'queued')
    table.insert(reply, 'queued')
    table.insert(reply, (redis.call('LPOS', q, e[2], 'RANK', -1) or -1) + 1)
  end
end
return append(reply, out)
