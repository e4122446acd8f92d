-- ARGV[8..]: member, ledger key ('' when the ledger is kept in the key-value store).
-- One user's state for `GET /api/v1/users/{id}`, in work bounded whatever the backlog
-- (LLEN and LINDEX are O(1); the ledger and the completions hold at most a minute's worth):
-- `[now, queued, head task id ('' for none), head slot, ledger present (0/1), ledger,
-- completion times…]`.
local member, ledger_key = ARGV[8], ARGV[9]
local q = prefix .. 'q:' .. member
local reply = {now_ms(), redis.call('LLEN', q)}
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
for _, t in ipairs(redis.call('LRANGE', prefix .. 'done:' .. member, 0, -1)) do table.insert(reply, t) end
return reply
