-- How long a message must still wait for the earlier messages of its conversation: the longest
-- time any of them, seen by parse before it and not yet decided, has left of the bound. 0: go.
-- An earlier message older than the bound (stuck in a download, a retry, a dead worker) no longer
-- holds the later ones back; it is handled when it can be.
-- KEYS: the order set, its "since" hash. ARGV: the message id, now (ms), the bound (ms).
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine then return 0 end
local now, bound, wait = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. mine)) do
  local left = tonumber(redis.call('HGET', KEYS[2], id) or '0') + bound - now
  if left > wait then wait = left end
end
return wait
