-- ARGV[7..]: the kind, how many tasks at most, the call's nonce (random, from the caller),
-- whether the caller's wait is over ('1': this reply is the answer whatever it holds).
-- A worker's claim: claims up to `max` tasks of the pulled kind whose start the windows and
-- `concurrency` allow now, soonest lanes first. Each is an attempt start the windows count,
-- exactly as a delivery's claim is (`run_due`, `claim`); the drainer is woken if none leads,
-- since it is who retries a claim that lapses. Returns `[now, next_in, n, claims×n]`:
-- `next_in` the ms until the kind's soonest lane may start (0: more are due now; -1: none
-- queued), each claim `CLAIM_ITEMS` items (lib.lua `claim`). A reply that is the answer (it
-- claimed, or the wait is over) counts its 200 here rather than by another round trip.
local kind, max, nonce, last = ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10] == '1'
local now = now_ms()
puller = {token = nonce, cap = max}
local pulled = prefix .. KEY_PULL .. kind
local claims, out = {}, {}
-- A due lane may give nothing (its `concurrency` is full): look again for the places left,
-- a few rounds at most.
for _ = 1, 4 do
  local left = max - #claims / CLAIM_ITEMS
  if left <= 0 then break end
  local members = redis.call('ZRANGEBYSCORE', pulled, '-inf', int(now), 'LIMIT', 0, left)
  if #members == 0 then break end
  for _, m in ipairs(members) do run_due(m, now, out, claims) end
end
if #claims > 0 then wake_drainer(false) end
if #claims > 0 or last then count('status:200', 1) end
local next_in = -1
local soonest = redis.call('ZRANGE', pulled, 0, 0, 'WITHSCORES')
if #soonest > 0 then next_in = math.max(0, tonumber(soonest[2]) - now) end
-- Due lanes left for want of places in this call: the next waiter takes them.
if next_in == 0 then ring(kind) end
return append({now, next_in, #claims / CLAIM_ITEMS}, claims)
