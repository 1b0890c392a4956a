-- Sandbox record: replace the record of a web that no longer answers, unless it changed meanwhile.
-- KEYS: the record. ARGV: the record seen, ours, its TTL (s).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) and 1 or 0 end
return 0
