-- Sandbox record: delete it only if it is still ours. KEYS: the record. ARGV: our record.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
