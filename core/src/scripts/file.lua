-- ARGV[7..]: member (the lane), user id, ledger key, ledger expiry (epoch ms), CAS retries
-- so far, kind, then for each task of the batch (in slot order): task id, slot, idempotency
-- key ('' for none), payload (its JSON text, '' for none: JSON text is never empty), cost,
-- policy (spec).
--
-- (Never a task to deliver: deliveries need the `redis` ledger, config.rs.)
-- Files the tasks of one user whose slots the `kv` ledger backend has just committed in
-- Spin's key-value store (`ledger::KvLedger`): extends the ledger's expiry, then
-- `file_tasks` (lib.lua). Returns its reply.
local member, user, ledger_key = ARGV[7], ARGV[8], ARGV[9]
local ledger_expire_at, retries, kind = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local now = now_ms()
count('cas_retries', retries)
-- A SET by the key-value store clears the TTL, so only ever extend it. The ledger constrains
-- nothing once its last slot is older than the lane's longest window.
local ttl = redis.call('PTTL', ledger_key)
if ttl == -1 or (ttl >= 0 and now + ttl < ledger_expire_at) then
  redis.call('PEXPIREAT', ledger_key, int(ledger_expire_at))
end

local tasks = {}
for a = 13, #ARGV, 6 do
  table.insert(tasks, {id = ARGV[a], slot = tonumber(ARGV[a + 1]), idem = ARGV[a + 2], payload = ARGV[a + 3],
    cost = tonumber(ARGV[a + 4]), spec = ARGV[a + 5], delivery = ''})
end
return file_tasks(member, user, kind, now, tasks)
