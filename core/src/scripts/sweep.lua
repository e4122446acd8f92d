-- Wakes the drainer if tasks wait and nobody holds the lease (GET /healthz calls it, so a
-- liveness probe doubles as a sweep), and counts the probe's 200 (no second round trip).
-- Returns 1 if it published a tick.
count('status:200', 1)
return wake_drainer()
