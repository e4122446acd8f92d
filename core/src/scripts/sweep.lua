-- ARGV[7]: '1' for a probe (GET /healthz), '0' for an admission's handler publishing again
-- after a wake-up nobody heard (drainer.rs `wake_until_heard`).
-- Wakes the drainer if tasks wait and nobody holds the lease (so a liveness probe doubles as
-- a sweep), and counts a probe's 200 (no second round trip). Returns `wake_drainer`'s 0, 1
-- or 2.
if ARGV[7] == '1' then count('status:200', 1) end
return wake_drainer()
