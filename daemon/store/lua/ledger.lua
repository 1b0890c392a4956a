-- The reply ledger's claims on a message's record (records.lua), in one command.
-- KEYS: the ledger entry an earlier release wrote for this index (only read).
-- ARGV: the operation, the record's time and digest, the index, the time now (s), the record's TTL (s).
--   claim: the index's send is ours when no one claimed it ('claimed'); 'sent' when it was sent or
--     refused for good; 'doubt' when an earlier attempt claimed it and never finished. Without a
--     state in the record, the earlier release's entry decides the same way.
--   take_over: claim it whatever its state (an operator accepted a possible second message).
--   release: give the claim back (the send surely did not happen), the earlier release's entry too.
local op, time, digest, index, now, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local place = rec_find(time, digest, now, ttl)
local owner, done, states = rec_parse(place.found)
local state = rec_state(states, index)
if op == 'claim' then
  if state == 'S' or state == 'R' then return 'sent' end
  if state == 's' then return 'doubt' end
  local earlier = redis.call('GET', KEYS[1])
  if earlier then
    if string.sub(earlier, 1, 4) == 'sent' or string.sub(earlier, 1, 7) == 'refused' then return 'sent' end
    return 'doubt'
  end
  state = 's'
elseif op == 'take_over' then
  state = 's'
else
  state = '.'
  redis.call('DEL', KEYS[1])
end
rec_write(place, rec_join(owner, done, rec_with_state(states, index, state)))
return 'claimed'
