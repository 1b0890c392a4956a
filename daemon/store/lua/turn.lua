-- Commit one inbound message's turn: the replies the bot decided and the conversation's new
-- state, variables, window time and history, all at once and only once. A turn already committed
-- for the message (a retry, a redelivery, a replay) is returned unchanged and nothing is applied.
-- The conversation's version must still be the one the bot was given: if another message of the
-- same user committed meanwhile, nothing is applied and the bot decides again from the new state.
-- KEYS: the turn, the conversation hash, its history list.
-- ARGV: the turn (JSON), the state (JSON), the variables (JSON), the inbound message's timestamp
-- (Unix seconds, '' if unknown), the history's length, the conversation's TTL (s), the turn's TTL
-- (s), the version the bot was given, the message id, then the history entries to append (JSON).
-- Returns {1 applied now | 0 committed before | -1 the conversation changed meanwhile, the turn}.
local existing = redis.call('GET', KEYS[1])
if existing then return {0, existing} end
if (redis.call('HGET', KEYS[2], 'version') or '0') ~= ARGV[8] then return {-1, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[7])
redis.call('HSET', KEYS[2], 'state', ARGV[2], 'variables', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'version', 1)
if ARGV[4] ~= '' then
  local last = tonumber(redis.call('HGET', KEYS[2], 'last_inbound') or '0')
  if tonumber(ARGV[4]) > last then redis.call('HSET', KEYS[2], 'last_inbound', ARGV[4]) end
end
for i = 10, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
if #ARGV >= 10 then redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1) end
redis.call('EXPIRE', KEYS[2], ARGV[6])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
return {1, ARGV[1]}
