-- Answers /metrics: every counter (field, value), then `waiting_users` and its value.
local reply = redis.call('HGETALL', metrics_key)
table.insert(reply, 'waiting_users')
table.insert(reply, tostring(redis.call('ZCARD', due_key)))
return reply
