-- Whether a message must still wait for the earlier messages of its user, and how long at most.
-- It goes when no earlier message is in the order (each left it when it ended), or when it has
-- waited the bound: then every earlier one loses its place (stuck in a slow download, a retry's
-- back-off, lost: it is handled when it can be, out of order), so that the user's later messages
-- do not wait for it again. A message that goes, or waits in its thread for the running one just
-- before it (nothing else ahead), is marked running (in the order's "running" hash, until it ends
-- or goes back to the queue). A message not in the order (ended, or never given a place) goes.
-- In the same call, whether sending from the business number is paused (what reply checks next).
-- KEYS: the order set, its running hash, the number's pause. ARGV: the message id, how long it has
-- waited (ms), the bound (ms), the order's TTL (s).
-- Returns {the most it must still wait (ms; 0: go), how many earlier messages lost their place,
-- how many earlier messages are in the order, 1 when the one just before it is running, 1 when
-- the number is paused}.
local paused = redis.call('EXISTS', KEYS[3])
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine then return {0, 0, 0, 0, paused} end
local earlier = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. mine)
local dropped = 0
if earlier > 0 then
  local left = tonumber(ARGV[3]) - tonumber(ARGV[2])
  if left > 0 then
    local before = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. mine, '-inf', 'LIMIT', 0, 1)
    local running = redis.call('HEXISTS', KEYS[2], before[1])
    if running == 1 and earlier == 1 then
      redis.call('HSET', KEYS[2], ARGV[1], '1')  -- it waits in its thread: it holds one too
      redis.call('EXPIRE', KEYS[2], ARGV[4])
    end
    return {left, 0, earlier, running, paused}
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. mine)) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    dropped = dropped + 1
  end
end
redis.call('HSET', KEYS[2], ARGV[1], '1')
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {0, dropped, 0, 0, paused}
