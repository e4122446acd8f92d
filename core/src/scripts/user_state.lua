-- ARGV[7..]: the user's tier key, then for each lane asked about: member, ledger key (''
-- when the ledger is kept in the key-value store).
-- One user's state for `GET /api/v1/users/{id}`, in work bounded whatever the backlog
-- (LLEN and LINDEX are O(1); a ledger and a completion history hold at most the largest
-- quota's worth): `[now, tier ('' for the built-in one), then per lane: queued, head task id
-- ('' for none), head slot, ledger present (0/1), ledger, n, completions×n]` (a completion is
-- '<ms>' or '<ms>*<units>').
local reply = {now_ms(), redis.call('GET', ARGV[7]) or ''}
for a = 8, #ARGV, 2 do
  local member, ledger_key = ARGV[a], ARGV[a + 1]
  local q = prefix .. KEY_QUEUE .. member
  table.insert(reply, redis.call('LLEN', q))
  local head = redis.call('LINDEX', q, 0)
  if head then
    local slot, id = split(head)
    table.insert(reply, id)
    table.insert(reply, slot)
  else
    table.insert(reply, '')
    table.insert(reply, 0)
  end
  local ledger = false
  if ledger_key ~= '' then ledger = redis.call('GET', ledger_key) end
  if ledger then
    table.insert(reply, 1)
    table.insert(reply, ledger)
  else
    table.insert(reply, 0)
    table.insert(reply, '')
  end
  local done = redis.call('LRANGE', prefix .. KEY_DONE .. member, 0, -1)
  table.insert(reply, #done)
  for _, t in ipairs(done) do table.insert(reply, t) end
end
return reply
