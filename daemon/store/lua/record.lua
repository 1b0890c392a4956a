-- The reply ledger's writes, in one command: SET each of the first n KEYS to its value with the
-- TTL (s); then, when one more key is given, append an event to that journey (keeping its last
-- events) and set its TTL. With n = 0 it only appends the event.
-- KEYS: the n keys to set, then the journey (optional).
-- ARGV: n, the n values, the TTL (s), then with a journey: the event, the most events kept, the
-- journey's TTL (s).
local n = tonumber(ARGV[1])
for i = 1, n do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[n + 2]) end
local journey = KEYS[n + 1]
if journey then
  local most = tonumber(ARGV[n + 4])
  if redis.call('RPUSH', journey, ARGV[n + 3]) > most then redis.call('LTRIM', journey, -most, -1) end
  redis.call('EXPIRE', journey, ARGV[n + 5])
end
return n
