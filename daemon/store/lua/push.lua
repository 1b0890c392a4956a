-- The enqueue every wapipe script shares: exactly Dramatiq's dispatch.lua enqueue (HSET the
-- message into <queue>.msgs, RPUSH its id onto <queue>), then a wake-up for idle consumers when the
-- queue was empty. A consumer sleeps only after a fetch found its queue empty (or while its
-- prefetch is full, when its own acks wake it), so a push onto a non-empty queue wakes no one.
local function store(queue_key, messages_key, id, data)
  redis.call('HSET', messages_key, id, data)
  redis.call('RPUSH', queue_key, id)
end
local function push(queue_key, messages_key, id, data, queue, channel)
  store(queue_key, messages_key, id, data)
  if redis.call('LLEN', queue_key) == 1 then redis.call('PUBLISH', channel, queue) end
end
