-- SET each KEYS[i] to ARGV[i], all with the TTL (s) in the last ARGV: several keys in one command.
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i], 'EX', ARGV[#ARGV]) end
return #KEYS
