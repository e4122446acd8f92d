-- ARGV[7..]: how many soonest lanes, recent completions, queued tasks per watched lane, the
-- watched user's tier key ('' when no user is watched), then the members of the watched
-- user's lanes (none when no user is watched). A bounded snapshot for the page (work
-- independent of the number of users), flattened: `now, queued, waiting, tier ('' for the
-- built-in one or no user), n, (user, kind, queued, next)×n, m, (task, user, slot,
-- completed, payload, kind, cost)×m, c, (task, user, kind, attempt, started, deadline)×c`
-- (the open claims of pulled kinds that lapse first, as many as `soonest`), then per watched
-- lane `k, (task, slot, payload, cost)×k, j, (completion)×j` (a payload is its JSON text, ''
-- for none; a completion '<ms>' or '<ms>*<units>').
local soonest, recent, queued_max = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local tier_key = ARGV[10]
local tier = ''
if tier_key ~= '' then tier = redis.call('GET', tier_key) or '' end
local reply = {now_ms(), tonumber(redis.call('HGET', metrics_key, 'queued') or '0'), redis.call('ZCARD', due_key), tier}
local next = redis.call('ZRANGE', due_key, 0, soonest - 1, 'WITHSCORES')
table.insert(reply, #next / 2)
for i = 1, #next, 2 do
  local q = prefix .. KEY_QUEUE .. next[i]
  local head = redis.call('LINDEX', q, 0)
  local user, kind = '', DEFAULT_KIND
  if head then
    local _, id = split(head)
    local record = redis.call('HMGET', prefix .. KEY_TASK .. id, 'u', 'k')
    user, kind = record[1] or '', record[2] or DEFAULT_KIND
  end
  for _, v in ipairs({user, kind, redis.call('LLEN', q), tonumber(next[i + 1])}) do table.insert(reply, v) end
end
-- (Only completions: a delivery attempt that did not complete its task has an `outcome`.)
local completions = {}
for _, entry in ipairs(redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', recent)) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  if not f.outcome then table.insert(completions, f) end
end
table.insert(reply, #completions)
for _, f in ipairs(completions) do
  for _, v in ipairs({f.task_id or '', f.user_id or '', f.slot or '0', f.completed_at or '0', f.payload or '',
      f.kind or DEFAULT_KIND, f.cost or '1'}) do
    table.insert(reply, v)
  end
end
-- (Deliveries' claims are in the same set: a bounded look past them.)
local pulled = {}
for _, id in ipairs(redis.call('ZRANGE', claims_key, 0, 4 * soonest - 1)) do
  if #pulled >= soonest then break end
  local r = redis.call('HMGET', prefix .. KEY_TASK .. id, 'u', 'k', 'a', 'r', 'd')
  if r[4] and r[5] and delivery_of(r[5]).pull then
    local deadline = tonumber(r[4]) + delivery_of(r[5]).timeout
    table.insert(pulled, {id, r[1] or '', r[2] or DEFAULT_KIND, tonumber(r[3]), tonumber(r[4]), deadline})
  end
end
table.insert(reply, #pulled)
for _, c in ipairs(pulled) do
  for _, v in ipairs(c) do table.insert(reply, v) end
end
for a = 11, #ARGV do
  local member = ARGV[a]
  local waiting = redis.call('LRANGE', prefix .. KEY_QUEUE .. member, 0, queued_max - 1)
  table.insert(reply, #waiting)
  for _, e in ipairs(waiting) do
    local slot, id = split(e)
    local record = redis.call('HMGET', prefix .. KEY_TASK .. id, 'p', 'w')
    for _, v in ipairs({id, slot, record[1] or '', record[2] or '1'}) do table.insert(reply, v) end
  end
  local done = redis.call('LRANGE', prefix .. KEY_DONE .. member, 0, -1)
  table.insert(reply, #done)
  for _, t in ipairs(done) do table.insert(reply, t) end
end
return reply
