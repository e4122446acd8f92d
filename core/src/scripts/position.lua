-- ARGV[7..]: member (the task's lane), task id. The task's position in its lane's queue (1-based; 0 when it
-- is no longer queued), for answering a repeated request.
local q = prefix .. KEY_QUEUE .. ARGV[7]
local slot = redis.call('HGET', prefix .. KEY_TASK .. ARGV[8], 's')
if not slot then return 0 end
local index = redis.call('LPOS', q, slot .. ':' .. ARGV[8])
if not index then return 0 end
return index + 1
