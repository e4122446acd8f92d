-- ARGV[7..]: the user's set of key ids. Their keys, `[id, created-at, …]` in id order.
local ids = redis.call('SMEMBERS', ARGV[7])
table.sort(ids)
local out = {}
for _, id in ipairs(ids) do
  local created = redis.call('HGET', prefix .. KEY_API_KEY .. id, 'c')
  if created then
    out[#out + 1] = id
    out[#out + 1] = created
  else
    redis.call('SREM', ARGV[7], id)
  end
end
return out
