-- ARGV[8..]: member, task id.
-- Runs the user's due head tasks now; same reply as a committed ADMIT (position 0 when the
-- task is still queued). Admission calls it while it waits for a task ADMIT queued, so a
-- task found completed turns that request's answer from 202 into 200.
local member, id = ARGV[8], ARGV[9]
local now = now_ms()
local out = {}
run_due(member, now, out)
wake_drainer()
local completed = redis.call('HGET', prefix .. 't:' .. id, 'c')
if completed then
  count_answer('202', 'queued', -1)
  count_answer('200', 'inline')
  return append({'completed', tonumber(completed), now}, out)
end
return append({'queued', 0, now}, out)
