-- ARGV[7..]: the key's record key, its user id ('' for a worker), its digest, the user's (or
-- the workers') set of key ids, the key id, a worker key's kinds ('a,b'; '' for a user's).
-- Stores a new API key (auth.rs) and returns when it was made; the record names the set, so
-- that revoking needs only the key id.
local now = now_ms()
redis.call('HSET', ARGV[7], 'u', ARGV[8], 'h', ARGV[9], 'c', now, 's', ARGV[10])
if ARGV[12] ~= '' then redis.call('HSET', ARGV[7], 'k', ARGV[12]) end
redis.call('SADD', ARGV[10], ARGV[11])
return now
