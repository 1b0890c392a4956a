-- Enqueue several messages at once, waking each queue that was empty before.
-- KEYS: per message its queue list and message hash.
-- ARGV: the wake-up channel, then per message its Redis message id, data and queue name.
local pushed, keys = {}, {}
for i = 1, #KEYS / 2 do
  store(KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 * i - 1], ARGV[3 * i])
  local queue = ARGV[3 * i + 1]
  if not pushed[queue] then keys[queue] = KEYS[2 * i - 1] end
  pushed[queue] = (pushed[queue] or 0) + 1
end
for queue, count in pairs(pushed) do
  if redis.call('LLEN', keys[queue]) == count then redis.call('PUBLISH', ARGV[1], queue) end
end
return #KEYS / 2
