-- ARGV[7..]: the key's record key, the key id. Deletes the key, so the next request with it
-- on any replica is refused; returns {user id, when}, or nothing for an unknown key.
local record = redis.call('HMGET', ARGV[7], 'u', 's')
if not record[1] then return {} end
redis.call('DEL', ARGV[7])
redis.call('SREM', record[2], ARGV[8])
return {record[1], now_ms()}
