-- ARGV[8..]: member ('' for none), how many soonest users, recent completions, queued
-- tasks of the member. A bounded snapshot for the page (work independent of the number of
-- users), flattened: `now, queued, waiting, n, (user, queued, next)×n, m,
-- (task, user, slot, completed, payload)×m, k, (task, slot, payload)×k, j, (completed)×j`
-- (a payload is its JSON text, '' for none).
local member = ARGV[8]
local soonest, recent, queued_max = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local reply = {now_ms(), tonumber(redis.call('HGET', metrics_key, 'queued') or '0'), redis.call('ZCARD', due_key)}
local function user_of(id) return redis.call('HGET', prefix .. 't:' .. id, 'u') or '' end
local next = redis.call('ZRANGE', due_key, 0, soonest - 1, 'WITHSCORES')
table.insert(reply, #next / 2)
for i = 1, #next, 2 do
  local q = prefix .. 'q:' .. next[i]
  local head = redis.call('LINDEX', q, 0)
  local user = ''
  if head then local _, id = split(head) user = user_of(id) end
  for _, v in ipairs({user, redis.call('LLEN', q), tonumber(next[i + 1])}) do table.insert(reply, v) end
end
local log = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', recent)
table.insert(reply, #log)
for _, entry in ipairs(log) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  for _, v in ipairs({f.task_id or '', f.user_id or '', f.slot or '0', f.completed_at or '0', f.payload or ''}) do
    table.insert(reply, v)
  end
end
local waiting, done = {}, {}
if member ~= '' then
  waiting = redis.call('LRANGE', prefix .. 'q:' .. member, 0, queued_max - 1)
  done = redis.call('LRANGE', prefix .. 'done:' .. member, 0, -1)
end
table.insert(reply, #waiting)
for _, e in ipairs(waiting) do
  local slot, id = split(e)
  table.insert(reply, id) table.insert(reply, slot)
  table.insert(reply, redis.call('HGET', prefix .. 't:' .. id, 'p') or '')
end
table.insert(reply, #done)
for _, t in ipairs(done) do table.insert(reply, t) end
return reply
