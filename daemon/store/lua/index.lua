-- A user's index of ledger subjects (their message ids, send:<key>), which `wapipe forget` follows:
-- a sorted set scored by when each was added, keeping the last `keep` seconds of them (as long as
-- what is kept under a subject may hold something of the user: its turn, the links of the messages
-- sent in answer) and expiring `keep` seconds after the last add.
-- An earlier release kept it as a plain set, without end: it is turned into the sorted set first.
local function index_add(key, member, now, keep)
  now, keep = tonumber(now), tonumber(keep)
  if redis.call('TYPE', key).ok == 'set' then
    local members = redis.call('SMEMBERS', key)
    redis.call('DEL', key)
    for _, earlier in ipairs(members) do redis.call('ZADD', key, now, earlier) end
  end
  redis.call('ZADD', key, now, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
  redis.call('EXPIRE', key, keep)
end
