-- ARGV[8]: idempotency key. Drops it if it is still only a reservation (admission stopped
-- before it stored a task), so a retry with the key starts afresh.
if redis.call('GET', ARGV[8]) == 'pending' then redis.call('DEL', ARGV[8]) end
return 0
