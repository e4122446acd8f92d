-- ARGV[7..]: task id, claim token, result ('ok', 'retry' or 'fail'), the worker's word for it
-- ('completed', 'retry', 'failed'), Retry-After ms ('0' for none), detail (JSON text, '' for
-- none), the kinds the caller may report for (',a,b,'; '' for any).
-- A worker's outcome for the attempt its claim token names: recorded as a delivery's is
-- (`settle`: the task completes, is admitted again, or fails), only while that claim is open.
-- Returns `[state, at]`: 'completed' (completed_at), 'queued' (the retry's slot), 'failed'
-- (when), or, changing nothing, 'stale' (the claim is not the task's open one: it lapsed, was
-- reported, or belongs to another task), 'forbidden' (a kind the caller may not report for;
-- at 0) or 'unknown' (no such task; at 0). The answer each makes (200, 409, 403, 404) is
-- counted here rather than by another round trip.
local id, token, result, word, retry_after, detail, kinds = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local key = prefix .. KEY_TASK .. id
local r = redis.call('HMGET', key, 's', 'k', 't', 'a', 'r')
if not r[1] then
  count('status:404', 1)
  return {'unknown', 0}
end
local kind = r[2] or DEFAULT_KIND
if kinds ~= '' and not string.find(kinds, ',' .. kind .. ',', 1, true) then
  count('status:403', 1)
  return {'forbidden', 0}
end
if r[3] ~= token then
  count('stale_outcomes', 1)
  count('status:409', 1)
  return {'stale', 0}
end
count('status:200', 1)
local now = now_ms()
if detail == '' then detail = nil end
settle(id, r[4], result, 'w:' .. word, int(now - tonumber(r[5])), retry_after, now, {}, nil, detail)
local after = redis.call('HMGET', key, 'c', 'f', 's')
if after[1] then return {'completed', tonumber(after[1])} end
if after[2] then return {'failed', tonumber(after[2])} end
return {'queued', tonumber(after[3])}
