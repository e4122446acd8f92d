-- ARGV[7..]: the outcomes of attempts admissions started (`start_at_admission` in lib.lua),
-- six items each, as drain.lua takes them (`settle`).
-- Records them, as a drainer records its own: the task completes, is admitted again, or
-- fails, only while the attempt's claim is open. Whatever the lane has queued next is filed
-- for the drainers, which are woken if none leads. Returns the completions (4 items each).
local now = now_ms()
local out = {}
for a = 7, #ARGV, 6 do
  settle(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], now, out, nil)
end
wake_drainer(false)
return out
