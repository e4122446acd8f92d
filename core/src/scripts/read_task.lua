-- ARGV[7..]: task id, whether to count the answer ('1' for `GET /api/v1/task/{id}`).
-- A task's record: `[u, s, c, x, p, k, w, r, f, h, y]` (user, slot, completed, cancelled,
-- payload, kind, cost, running since, failed, attempts, a worker's detail), nil for each
-- field it lacks. When asked, the answer it
-- makes (200, or 404 without a record) is counted here rather than by a second round trip.
local record = redis.call('HMGET', prefix .. KEY_TASK .. ARGV[7], 'u', 's', 'c', 'x', 'p', 'k', 'w', 'r', 'f', 'h', 'y')
if ARGV[8] == '1' then
  if record[1] then count('status:200', 1) else count('status:404', 1) end
  -- A client waiting on an unfinished task wakes the drainer if nobody leads (one EXISTS
  -- when someone does). After every replica was restarted, or a wake-up went unheard, its
  -- polls alone then get the task run: Spin has no timer to do it.
  if record[1] and not (record[3] or record[4] or record[9]) then wake_drainer() end
end
return record
