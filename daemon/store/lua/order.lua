-- A user's order: a sorted set of the ids of their messages not yet ended, each scored by its
-- place: the time (µs) its webhook was received, plus its position among the user's messages of
-- that webhook (a business send: the time it first ran). Shared by the scripts that give places.
-- Give a message its place in an order unless it has one.
local function order_place(key, id, place, ttl)
  redis.call('ZADD', key, 'NX', place, id)
  redis.call('EXPIRE', key, ttl)
end
