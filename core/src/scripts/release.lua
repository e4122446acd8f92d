-- ARGV[7]: idempotency key. Drops it if it is still only a reservation (admission stopped
-- before it stored a task), so a retry with the key starts afresh.
if redis.call('GET', ARGV[7]) == 'pending' then redis.call('DEL', ARGV[7]) end
return 0
