-- ARGV[8..]: member, user id, ledger key, idempotency key (its record's key; '' for none),
-- most tasks queued per user (0 = no limit), task id, the task's ledger tag, payload (its
-- JSON text, '' for none).
--
-- A whole admission with the `redis` ledger backend, in one round trip and one atomic step:
-- the Redis clock (the task's arrival: one clock for every replica), the Idempotency-Key,
-- the user's backlog, the slot from the user's ledger by the rule (`earliest`, which
-- `runtime-tests/tests/lua_rule.rs` holds to slot.rs), the new ledger, and the task filed
-- (run at once if its slot is now). As one script it needs no compare-and-set: no other
-- admission can come between reading the user's ledger and writing it.
--
-- Returns `['earlier', now, task id | 'pending', ledger present (0/1), ledger]` for a
-- repeated Idempotency-Key, `['full', now]`, `['corrupt', ledger]` for a foreign value, or
-- `['admitted', slot, new ledger, <file_tasks reply>…]`.
local member, user, ledger_key, idem = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local max_backlog, id, tag, payload = tonumber(ARGV[12]), ARGV[13], ARGV[14], ARGV[15]
local now = now_ms()
local stored = redis.call('GET', ledger_key)
if idem ~= '' then
  local earlier = redis.call('GET', idem)
  if earlier and stored then return {'earlier', now, earlier, 1, stored} end
  if earlier then return {'earlier', now, earlier, 0, ''} end
end
if max_backlog > 0 and redis.call('LLEN', prefix .. 'q:' .. member) >= max_backlog then
  return {'full', now}
end

-- The ledger as ledger.rs `Ledger` writes it: 'v1 <seq> <slot>:<tag> …', oldest entry first,
-- the newest with sequence number <seq>. Read with one pattern match rather than word by
-- word: this runs on every admission.
local seq, rest, slots = 0, '', {}
if stored then
  local s, r = string.match(stored, '^v1 (%d+)(.*)$')
  if not s then return {'corrupt', stored} end
  seq, rest = tonumber(s), r
  for t in string.gmatch(rest, ' (%-?%d+):') do slots[#slots + 1] = tonumber(t) end
  if #slots == 0 and rest ~= '' then return {'corrupt', stored} end
end
local slot = earliest(now, function(k) return slots[#slots - k + 1] end)
-- Keep what the rule looks at (slot.rs `Limits::history`), at least our own entry: drop the
-- oldest entries past that.
local drop = #slots - math.max(history, 1) + 1
if drop >= #slots then
  rest = ''
else
  local cut = 1
  for _ = 1, drop do cut = string.find(rest, ' ', cut + 1, true) end
  rest = string.sub(rest, cut)
end
local ledger = 'v1 ' .. int(seq + 1) .. rest .. ' ' .. int(slot) .. ':' .. tag
-- The ledger constrains nothing once its last slot is a minute old.
redis.call('SET', ledger_key, ledger, 'PXAT', int(slot + minute_ms + second_ms))

local filed = file_tasks(member, user, now, {{id = id, slot = slot, idem = idem, payload = payload}})
return append({'admitted', slot, ledger}, filed)
