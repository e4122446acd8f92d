-- Wakes the drainer if tasks wait and nobody holds the lease (GET /healthz calls it, so a
-- liveness probe doubles as a sweep). Returns 1 if it published a tick.
return wake_drainer()
