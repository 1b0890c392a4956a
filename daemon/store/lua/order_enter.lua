-- Give a message the next place in its conversation's order, unless it has one.
-- KEYS: the order set, its "since" hash, its counter. ARGV: the message id, now (ms), the TTL (s).
-- Returns its place.
local place = redis.call('ZSCORE', KEYS[1], ARGV[1])
if place then return tonumber(place) end
place = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], place, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return place
