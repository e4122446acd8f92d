-- ARGV[7..]: member (the task's lane), task id.
-- Runs the lane's due head tasks now; same reply as a committed ADMIT (position 0 when the
-- task is still queued). Admission calls it while it waits for a task ADMIT queued, so a
-- task found completed turns that request's answer from 202 into 200.
local member, id = ARGV[7], ARGV[8]
local now = now_ms()
local out = {}
run_due(member, now, out)
wake_drainer()
local record = redis.call('HMGET', prefix .. KEY_TASK .. id, 'c', 'k')
if record[1] then
  local kind = record[2] or DEFAULT_KIND
  count_answer('queued', kind, -1)
  count_answer('inline', kind)
  return append({'completed', tonumber(record[1]), now}, out)
end
return append({'queued', 0, now}, out)
