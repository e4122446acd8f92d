-- ARGV[8..]: member, task id. The task's position in its user's queue (1-based; 0 when it
-- is no longer queued), for answering a repeated request.
local q = prefix .. 'q:' .. ARGV[8]
local slot = redis.call('HGET', prefix .. 't:' .. ARGV[9], 's')
if not slot then return 0 end
local index = redis.call('LPOS', q, slot .. ':' .. ARGV[9])
if not index then return 0 end
return index + 1
