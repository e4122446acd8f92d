-- ARGV[7..]: member (the lane), user id, ledger key, idempotency key (its record's key; ''
-- for none), most tasks queued per lane (0 = no limit), task id, the task's ledger tag,
-- payload (its JSON text, '' for none), kind, cost (units), ledger entries to keep and for
-- how long (ms: the lane's policies' largest quota and longest window over every tier), the
-- user's tier key ('' when no tier overrides this kind), the kind's built-in policy (spec),
-- its delivery (`Delivery::spec`; '' for a kind without a target), then (tier, policy) for
-- each tier that overrides it.
--
-- A whole admission with the `redis` ledger backend, in one round trip and one atomic step:
-- the Redis clock (the task's arrival: one clock for every replica), the user's tier and so
-- the lane's policy, the Idempotency-Key, the lane's backlog, the slot from the lane's
-- ledger by the rule (`earliest`, which `runtime-tests/tests/lua_rule.rs` holds to slot.rs),
-- the new ledger, and the task filed (run at once if its slot is now; a task to deliver whose
-- slot is now has its first attempt started, for the caller to make). As one script it needs
-- no compare-and-set: no other admission can come between reading the lane's ledger and
-- writing it.
--
-- Returns `['earlier', now, task id | 'pending', ledger present (0/1), ledger, tier]` for a
-- repeated Idempotency-Key, `['full', now]`, `['corrupt', ledger]` for a foreign value,
-- `['costly', tier, quota, window ms]` for a cost that no slot could ever admit under the
-- policy, or `['admitted', slot, new ledger, tier, <file_tasks reply>…]` ('' for the built-in
-- tier).
local member, user, ledger_key, idem = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local max_backlog, id, tag, payload = tonumber(ARGV[11]), ARGV[12], ARGV[13], ARGV[14]
local kind, cost, keep, keep_ms = ARGV[15], tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
local tier_key, spec, delivery = ARGV[19], ARGV[20], ARGV[21]
local tier = ''
if tier_key ~= '' then
  tier = redis.call('GET', tier_key) or ''
  for a = 22, #ARGV, 2 do
    if ARGV[a] == tier then spec = ARGV[a + 1] break end
  end
end
local windows = windows_of(spec)
local now = now_ms()
local stored = redis.call('GET', ledger_key)
if idem ~= '' then
  local earlier = redis.call('GET', idem)
  if earlier and stored then return {'earlier', now, earlier, 1, stored, tier} end
  if earlier then return {'earlier', now, earlier, 0, '', tier} end
end
if backlog_full(member, max_backlog) then return {'full', now} end
for _, window in ipairs(windows) do
  if cost > window[1] then return {'costly', tier, window[1], window[2]} end
end

-- The ledger as ledger.rs `Ledger` writes it: 'v1 <seq>', then ' <slot>:<tag>' per entry
-- ('*<cost>' after the tag when it is not 1), oldest first, the newest with sequence
-- number <seq>.
local seq, rest = 0, ''
if stored then
  local s, r = string.match(stored, '^v1 (%d+)(.*)$')
  if not s then return {'corrupt', stored} end
  seq, rest = tonumber(s), r
end
-- The app writes every entry of a 1-unit task with a 13-digit slot (epoch ms from 2001 to
-- 2286) and a 12-character tag: 27 bytes. In a ledger of only such entries, the few the rule
-- needs are read in place, where a pass over the whole ledger would be most of this script's
-- Lua time (measured: ~9 of ~43 us). A ledger of any other shape (weighted entries among
-- them) is read entry by entry.
local ENTRY = 27
local ENTRY_PATTERN = '^ (' .. string.rep('%d', 13) .. '):' .. string.rep('%w', 12)
-- (A '*' anywhere marks a weighted entry, and so another shape.)
local fixed = #rest % ENTRY == 0 and not string.find(rest, '*', 1, true)
local n = fixed and #rest / ENTRY or 0
local function fixed_slot(i)
  local at = (i - 1) * ENTRY + 1
  local slot = string.match(rest, ENTRY_PATTERN, at)
  local after = string.sub(rest, at + ENTRY, at + ENTRY)
  if slot and (after == '' or after == ' ') then return tonumber(slot) end
  fixed = false
end
local function fixed_back(k) if k <= n then return fixed_slot(n - k + 1), 1 end end
local slot = earliest(now, windows, cost, fixed_back, true)
if not fixed then
  local slots, costs = {}, {}
  for t, c in string.gmatch(rest, ' (%-?%d+):%w*%*?(%d*)') do
    slots[#slots + 1] = tonumber(t)
    costs[#slots] = tonumber(c) or 1
  end
  if #slots == 0 and rest ~= '' then return {'corrupt', stored} end
  n = #slots
  slot = earliest(now, windows, cost, function(k) if k <= n then return slots[n - k + 1], costs[n - k + 1] end end)
end
-- Keep what the lane's policies can look at, at least our own entry: drop the oldest
-- entries past that.
local drop = n - math.max(keep, 1) + 1
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
if cost ~= 1 then ledger = ledger .. '*' .. cost end
-- The ledger constrains nothing once its last slot is older than the longest window.
redis.call('SET', ledger_key, ledger, 'PXAT', int(slot + keep_ms + 1000))

local task = {id = id, slot = slot, idem = idem, payload = payload, cost = cost, spec = spec, delivery = delivery}
-- (A task to deliver whose slot is now starts here, and the caller delivers it.)
local filed = file_tasks(member, user, kind, now, {task}, {})
return append({'admitted', slot, ledger, tier}, filed)
