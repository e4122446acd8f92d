-- ARGV[8]: task id. The task's record for `GET /api/v1/task/{id}`: `[u, s, c, x, p]`, nil for
-- each field it lacks. The answer it makes (200, or 404 without a record) is counted here
-- rather than by a second round trip.
local record = redis.call('HMGET', prefix .. 't:' .. ARGV[8], 'u', 's', 'c', 'x', 'p')
if record[1] then count('status:200', 1) else count('status:404', 1) end
return record
