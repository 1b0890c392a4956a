-- The reply ledger's writes, in one command: SET each of the first n KEYS to its value with the
-- TTL (s); then, when a digest is given, update that message's record (records.lua): the state of
-- the message sent at an index (index -1: none) and whether it is done (its number of replies);
-- then, when a message id is given, take it out of its user's order and the order's running hash
-- (order.lua: it ended); then, when one more key is given, append an event to that journey (keeping
-- its last events) and set its TTL. With n = 0 and no digest it only appends the event.
-- KEYS: the n keys to set, then the user's order set and its running hash (with a message id),
-- then the journey (optional).
-- ARGV: n, the n values, the TTL (s), then the record's time, digest ('' for none), index, state
-- ('' for none), handled ('' for not yet), the time now (s) and the record's TTL (s), the message id
-- leaving its order ('' for none), then with a journey: the event, the most events kept, the
-- journey's TTL (s).
local n = tonumber(ARGV[1])
for i = 1, n do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[n + 2]) end
local r = n + 3
local digest = ARGV[r + 1]
if digest ~= '' then
  local time, index, state, handled, now, ttl = ARGV[r], tonumber(ARGV[r + 2]), ARGV[r + 3], ARGV[r + 4], ARGV[r + 5], ARGV[r + 6]
  local place = rec_find(time, digest, now, ttl)
  local owner, done, states = rec_parse(place.found)
  if index >= 0 and state ~= '' then states = rec_with_state(states, index, state) end
  if handled ~= '' then done = handled end
  rec_write(place, rec_join(owner, done, states))
end
local next_key = n + 1
if ARGV[r + 7] ~= '' then
  redis.call('ZREM', KEYS[next_key], ARGV[r + 7])
  redis.call('HDEL', KEYS[next_key + 1], ARGV[r + 7])
  next_key = next_key + 2
end
local journey = KEYS[next_key]
if journey then
  local j = r + 8
  local most = tonumber(ARGV[j + 1])
  if redis.call('RPUSH', journey, ARGV[j]) > most then redis.call('LTRIM', journey, -most, -1) end
  redis.call('EXPIRE', journey, ARGV[j + 2])
end
return n
