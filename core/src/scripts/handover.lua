-- ARGV[7]: the leader's token.
-- A leader's handover: frees the lease if it still holds it, then ticks. Freed, the lease
-- goes to the first drain call of any replica, a helper's already running included; held
-- until it lapsed, the lease passed only to a replica free to hear the tick, and while every
-- replica was busy helping (a Redis trigger takes one message at a time) nobody led for up
-- to the lease's whole TTL: the helpers claimed late, `HELP_AFTER_MS` behind each slot.
local token = ARGV[7]
if redis.call('GET', lease_key) == token then redis.call('DEL', lease_key) end
redis.call('PUBLISH', tick_channel, token)
return 0
