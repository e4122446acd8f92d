-- ARGV[7..]: member (the task's lane), task id.
-- Cancels a queued task: takes it out of its user's queue and marks its record, in one
-- script. The executor (`run_due`) is one script too, so a cancel racing it finds the task
-- either still queued (it is cancelled and never runs) or already completed, never both.
-- The slot it held stays empty: the ledger is not touched, so every later task keeps the
-- slot its 202 promised. Returns `[state, at]`: 'cancelled' (now, or when an earlier
-- cancel did it), 'completed' (completed_at), 'failed' (when), 'running' (since: a delivery
-- attempt is in flight), 'unknown', or 'unqueued' (a record without a queue entry: a bug).
local member, id = ARGV[7], ARGV[8]
local task = prefix .. KEY_TASK .. id
local record = redis.call('HMGET', task, 's', 'c', 'x', 'f', 'r')
if not record[1] then return {'unknown', 0} end
if record[2] then return {'completed', tonumber(record[2])} end
if record[3] then return {'cancelled', tonumber(record[3])} end
if record[4] then return {'failed', tonumber(record[4])} end
if record[5] then return {'running', tonumber(record[5])} end
local q = prefix .. KEY_QUEUE .. member
if redis.call('LREM', q, 1, record[1] .. ':' .. id) == 0 then return {'unqueued', 0} end
local now = now_ms()
redis.call('HSET', task, 'x', int(now))
redis.call('PEXPIRE', task, task_ttl)
count('queued', -1)
count('cancelled', 1)
-- The head may have changed: file the lane under the instant the head may start now.
refile(member, now)
return {'cancelled', now}
