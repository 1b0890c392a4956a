-- Sandbox record: extend ours, or write it when there is none. 0 when another web's record is there.
-- KEYS: the record. ARGV: our record, its TTL (s).
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not current then return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) and 1 or 0 end
return 0
