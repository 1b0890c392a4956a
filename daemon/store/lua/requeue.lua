-- Put back on their queues the messages a dead worker process had fetched and not acked, at once:
-- what Dramatiq's maintenance does for a process whose heartbeat timed out, done by the parent
-- that saw it die. A ready queue's messages go back to its head, the oldest first, where they
-- were fetched from (so a user's earlier message comes before the later ones still queued); a
-- delay queue's to its tail (their time decides when they run, not their place). An id whose
-- message is gone from the queue's hash (acked meanwhile) is dropped, as the maintenance drops
-- it. A queue that got messages back is woken. Finally the process leaves the heartbeat set.
-- KEYS: per queue its fetched set, message hash and list; last, the heartbeat set.
-- ARGV: the broker id, the wake-up channel, then per queue its name and 1 (ready) or 0 (delay).
local queues = (#KEYS - 1) / 3
local total = 0
for q = 0, queues - 1 do
  local fetched, messages, list = KEYS[3 * q + 1], KEYS[3 * q + 2], KEYS[3 * q + 3]
  local name, ready = ARGV[3 + 2 * q], ARGV[4 + 2 * q] == '1'
  local found = {}
  for _, id in ipairs(redis.call('SMEMBERS', fetched)) do
    local data = redis.call('HGET', messages, id)
    if data then
      local at = 0
      if ready then
        local ok, message = pcall(cjson.decode, data)
        if ok and type(message) == 'table' and type(message.message_timestamp) == 'number' then
          at = message.message_timestamp
        end
      end
      found[#found + 1] = {id, at}
    end
  end
  if #found > 0 then
    if ready then
      -- newest first: each LPUSH goes before the one pushed before it, so the oldest ends first
      table.sort(found, function(a, b) return a[2] > b[2] end)
      for _, entry in ipairs(found) do redis.call('LPUSH', list, entry[1]) end
    else
      for _, entry in ipairs(found) do redis.call('RPUSH', list, entry[1]) end
    end
    redis.call('PUBLISH', ARGV[2], name)
    total = total + #found
  end
  redis.call('DEL', fetched)
end
redis.call('ZREM', KEYS[#KEYS], ARGV[1])
return total
