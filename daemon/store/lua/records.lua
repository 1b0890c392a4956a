-- The message records, shared by the scripts that claim, send and record (see records.py).
--
-- What wapipe must remember of each inbound message (or business send) for its window: which
-- parse attempt claimed it, the state of each message sent in answer, and whether it is done. A
-- record is its digest (8 bytes) → "<owner>|<handled>|<states>" in the hash
-- wapipe:rec:<bucket>:<shard>, bucket = floor(time / REC_BUCKET_SECONDS) of the message's own time
-- (Meta's timestamp, the same in every redelivery), shard = the digest's first 4 bytes mod the
-- bucket's shard count. That count is fixed when the bucket gets its first record, from the
-- previous bucket's number of records, so that a shard holds about REC_PER_SHARD records and stays
-- in Redis's compact encoding (up to 128 entries by default); at least REC_MIN_SHARDS, so that a
-- bucket sized before a burst (after a quiet spell, at start) still holds 8,192 records compactly.
-- It is kept in wapipe:rec:<bucket> (fields s and n).
-- owner: the first 8 hex digits of the SHA-1 of the claiming parse attempt ('' for none);
-- handled: the number of messages that answered it once done ('' before); states: one character
-- per message sent in answer, by index: s sending (claimed: in doubt to anyone else), S sent,
-- R refused for good, '.' none yet.
local REC_BUCKET_SECONDS = 600
local REC_PER_SHARD = 48
local REC_MAX_SHARDS = 65536
local REC_MIN_SHARDS = 64

local function rec_shard(bucket, digest, shards)
  local a, b, c, d = string.byte(digest, 1, 4)
  return 'wapipe:rec:' .. bucket .. ':' .. ((((a * 256 + b) * 256 + c) * 256 + d) % shards)
end

local function rec_expiry(bucket, now, ttl)
  return math.max((bucket + 1) * REC_BUCKET_SECONDS, tonumber(now)) + tonumber(ttl)
end

-- Keep key until at least `at` (Unix s): an expiry is only ever moved later, so that a bucket's
-- shard count never expires before one of its shards.
local function rec_keep(key, at, now)
  local left = redis.call('TTL', key)
  if left < 0 or tonumber(now) + left < at then redis.call('EXPIREAT', key, at) end
end

-- Where the record of (time, digest) is, for rec_write: its hash (key), the record (found, false
-- when there is none), the bucket's key (meta) and number, the time now and the record TTL. A
-- bucket without records gets its shard count here (and lives ttl seconds after the later of its
-- end and now).
local function rec_find(time, digest, now, ttl)
  local bucket = math.floor(tonumber(time) / REC_BUCKET_SECONDS)
  local meta = 'wapipe:rec:' .. bucket
  local shards = tonumber(redis.call('HGET', meta, 's') or '0')
  if shards == 0 then
    local before = tonumber(redis.call('HGET', 'wapipe:rec:' .. (bucket - 1), 'n') or '0')
    shards = REC_MIN_SHARDS
    while shards * REC_PER_SHARD < before and shards < REC_MAX_SHARDS do shards = shards * 2 end
    redis.call('HSET', meta, 's', shards, 'n', 0)
    rec_keep(meta, rec_expiry(bucket, now, ttl), now)
  end
  local key = rec_shard(bucket, digest, shards)
  return {key = key, found = redis.call('HGET', key, digest), meta = meta, bucket = bucket,
          digest = digest, now = now, ttl = ttl}
end

-- Set the record found at place (rec_find) to value. A new record counts in its bucket and keeps
-- the bucket's keys ttl seconds after the later of its end and now.
local function rec_write(place, value)
  redis.call('HSET', place.key, place.digest, value)
  if not place.found then
    local at = rec_expiry(place.bucket, place.now, place.ttl)
    redis.call('HINCRBY', place.meta, 'n', 1)
    rec_keep(place.key, at, place.now)
    rec_keep(place.meta, at, place.now)
  end
end

local function rec_parse(value)
  if not value then return '', '', '' end
  return string.match(value, '^([^|]*)|([^|]*)|(.*)$')
end

local function rec_join(owner, handled, states)
  return owner .. '|' .. handled .. '|' .. states
end

local function rec_owner(owner)
  if owner == '' then return '' end
  return string.sub(redis.sha1hex(owner), 1, 8)
end

-- The state of the message sent at index (0-based): s, S, R or '.'.
local function rec_state(states, index)
  local c = string.sub(states, index + 1, index + 1)
  if c == '' then return '.' end
  return c
end

local function rec_with_state(states, index, c)
  if #states <= index then states = states .. string.rep('.', index + 1 - #states) end
  states = string.sub(states, 1, index) .. c .. string.sub(states, index + 2)
  return (string.gsub(states, '%.+$', ''))
end
