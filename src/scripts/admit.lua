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
if backlog_full(member, max_backlog) then return {'full', now} end

-- The ledger as ledger.rs `Ledger` writes it: 'v1 <seq>', then ' <slot>:<tag>' per entry,
-- oldest first, the newest with sequence number <seq>.
local seq, rest = 0, ''
if stored then
  local s, r = string.match(stored, '^v1 (%d+)(.*)$')
  if not s then return {'corrupt', stored} end
  seq, rest = tonumber(s), r
end
-- The app writes every entry with a 13-digit slot (epoch ms from 2001 to 2286) and a
-- 12-character tag: 27 bytes. Then the few entries the rule needs are read in place, where a
-- pass over the whole ledger would be most of this script's Lua time (measured: ~9 of
-- ~43 us). A ledger of any other shape is read entry by entry.
local ENTRY = 27
local ENTRY_PATTERN = '^ (' .. string.rep('%d', 13) .. '):' .. string.rep('%w', 12)
local fixed = #rest % ENTRY == 0
local n = fixed and #rest / ENTRY or 0
local function fixed_slot(i)
  local at = (i - 1) * ENTRY + 1
  local slot = string.match(rest, ENTRY_PATTERN, at)
  local after = string.sub(rest, at + ENTRY, at + ENTRY)
  if slot and (after == '' or after == ' ') then return tonumber(slot) end
  fixed = false
end
local slot = earliest(now, function(k) if k <= n then return fixed_slot(n - k + 1) end end)
if not fixed then
  local slots = {}
  for t in string.gmatch(rest, ' (%-?%d+):') do slots[#slots + 1] = tonumber(t) end
  if #slots == 0 and rest ~= '' then return {'corrupt', stored} end
  n = #slots
  slot = earliest(now, function(k) return slots[n - k + 1] end)
end
-- Keep what the rule looks at (slot.rs `Limits::history`), at least our own entry: drop the
-- oldest entries past that.
local drop = n - math.max(history, 1) + 1
if drop >= n then
  rest = ''
elseif drop > 0 then
  local cut = drop * ENTRY + 1
  if not (fixed and string.sub(rest, cut, cut) == ' ') then
    cut = 1
    for _ = 1, drop do cut = string.find(rest, ' ', cut + 1, true) end
  end
  rest = string.sub(rest, cut)
end
local ledger = 'v1 ' .. int(seq + 1) .. rest .. ' ' .. int(slot) .. ':' .. tag
-- The ledger constrains nothing once its last slot is a minute old.
redis.call('SET', ledger_key, ledger, 'PXAT', int(slot + minute_ms + second_ms))

local filed = file_tasks(member, user, now, {{id = id, slot = slot, idem = idem, payload = payload}})
return append({'admitted', slot, ledger}, filed)
