-- Replay a dead letter: enqueue its fresh message and remove the dead letter, atomically (it runs
-- once). Returns 0, doing nothing, when the dead letter is already gone.
-- KEYS: the target queue list and message hash, the dead-letter set, its messages, the reasons.
-- ARGV: the new Redis message id, its data, its queue name, the wake-up channel, the dead letter's id.
if redis.call('ZREM', KEYS[3], ARGV[5]) == 0 then return 0 end
redis.call('HDEL', KEYS[4], ARGV[5])
redis.call('HDEL', KEYS[5], ARGV[5])
push(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
