-- ARGV[7..]: the key's record key, its user id, its digest, the user's set of key ids,
-- the key id. Stores a new API key (auth.rs) and returns when it was made; the record names
-- the set, so that revoking needs only the key id.
local now = now_ms()
redis.call('HSET', ARGV[7], 'u', ARGV[8], 'h', ARGV[9], 'c', now, 's', ARGV[10])
redis.call('SADD', ARGV[10], ARGV[11])
return now
