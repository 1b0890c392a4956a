-- parse's one round trip per envelope: claim each item's dedup mark, hand fresh messages on,
-- record fresh statuses, dead-letter the items that cannot be handled. All of it or none.
--
-- KEYS: per item its dedup mark (for a message: the mark an earlier release wrote, only read) and
-- its target (a message: the queue list and message hash it goes to, and its journey; a status:
-- its status hash), then per ordered message its user's order set, then per dated message its
-- conversation's hash, its user's index of messages and the set of active conversations, then per
-- bad item its queue's dead-letter set, their messages and the reasons hash.
-- ARGV: the number of items, of ordered messages and of dated messages, the time now (s), then 12
-- values per item: kind, owner, dedup TTL (s), '1' to skip the dedup check (replay, no id), then for
-- a message push's id, data, queue and channel, its journey's first event ('' for none), the
-- journey's TTL (s), its record's time and digest (records.lua; the TTL is then the record's;
-- '' for none: a business send, claimed by its mark), for a status its status, rank, timestamp,
-- TTL (s), error code ('' for none) and three ''; then 4 values per ordered message: its item's
-- number (1-based), its message id, its place (µs) and the order's TTL (s) — a fresh one takes
-- that place in its user's order (order.lua); then 6 values per dated
-- message: its item's number, Meta's timestamp of it (0 if unknown), the conversation's TTL
-- (s), its message id, its conversation's member of the active set and how long its user's index
-- keeps it (s) — a fresh one moves its conversation's last_inbound and its place in the active set
-- (the 24-hour window) forward and joins its user's index (for erasure, index.lua); then 4 values
-- per bad item:
-- its dead letter's id, message data, reason record and time (ms), in Dramatiq's dead-letter layout.
--
-- A message is claimed in its record: one claimed by another owner (or by none: an earlier
-- release's reply made it) is a duplicate, one claimed by the same owner (a retried parse) is
-- handed on again; without a record, an earlier release's mark decides the same way. A status,
-- and a business send's key, is claimed by its mark. A status only replaces a lower rank.
-- Returns one flag per item: 1 handled now, 0 a duplicate.
local results = {}
local k = 1
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local t = tonumber(ARGV[3])
local now = ARGV[4]
for i = 1, n do
  local a = 4 + (i - 1) * 12
  local kind, owner, ttl = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local fresh = ARGV[a + 4] == '1'
  if not fresh and kind == 'message' and ARGV[a + 12] ~= '' then
    local time, digest = ARGV[a + 11], ARGV[a + 12]
    local place = rec_find(time, digest, now, ttl)
    if place.found then
      local claimed_by = rec_parse(place.found)
      fresh = claimed_by ~= '' and claimed_by == rec_owner(owner)
    else
      local earlier = redis.call('GET', KEYS[k])
      fresh = not earlier or earlier == owner
      if fresh then rec_write(place, rec_join(rec_owner(owner), '', '')) end
    end
  elseif not fresh then
    fresh = redis.call('SET', KEYS[k], owner, 'NX', 'EX', ttl) and true or redis.call('GET', KEYS[k]) == owner
  end
  if kind == 'message' then
    if fresh then
      push(KEYS[k + 1], KEYS[k + 2], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8])
      if ARGV[a + 9] ~= '' then
        redis.call('RPUSH', KEYS[k + 3], ARGV[a + 9])
        redis.call('EXPIRE', KEYS[k + 3], ARGV[a + 10])
      end
    end
    k = k + 4
  else
    if fresh and tonumber(ARGV[a + 6]) > tonumber(redis.call('HGET', KEYS[k + 1], 'rank') or '0') then
      redis.call('HSET', KEYS[k + 1], 'status', ARGV[a + 5], 'rank', ARGV[a + 6], 'timestamp', ARGV[a + 7])
      if ARGV[a + 9] ~= '' then redis.call('HSET', KEYS[k + 1], 'error', ARGV[a + 9]) end
      redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 8])
    end
    k = k + 2
  end
  results[i] = fresh and 1 or 0
end
for j = 0, m - 1 do
  local o = 5 + n * 12 + j * 4
  if results[tonumber(ARGV[o])] == 1 then order_place(KEYS[k], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]) end
  k = k + 1
end
for j = 0, t - 1 do
  local o = 5 + n * 12 + m * 4 + j * 6
  if results[tonumber(ARGV[o])] == 1 then
    if tonumber(ARGV[o + 1]) > tonumber(redis.call('HGET', KEYS[k], 'last_inbound') or '0') then
      redis.call('HSET', KEYS[k], 'last_inbound', ARGV[o + 1])
    end
    redis.call('EXPIRE', KEYS[k], ARGV[o + 2])
    index_add(KEYS[k + 1], ARGV[o + 3], now, ARGV[o + 5])
    redis.call('ZADD', KEYS[k + 2], 'GT', ARGV[o + 1], ARGV[o + 4])
  end
  k = k + 3
end
for b = 5 + n * 12 + m * 4 + t * 6, #ARGV, 4 do
  redis.call('ZADD', KEYS[k], ARGV[b + 3], ARGV[b])
  redis.call('HSET', KEYS[k + 1], ARGV[b], ARGV[b + 1])
  redis.call('HSET', KEYS[k + 2], ARGV[b], ARGV[b + 2])
  k = k + 3
end
return results
