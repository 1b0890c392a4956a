-- Reserve one send slot on each limiter key (GCRA, on Redis's own clock), in the keys' order: a
-- key's slot is never before the slots of the keys before it (the send waits for all of them), so
-- a later key's schedule gets no hole before a slot the send could not use.
-- KEYS: the limiter keys. ARGV: per key its interval (µs), burst (slots allowed ahead of time), the
-- slot the send already holds on it (µs; 0: none, reserve one) and the longest wait (µs) worth
-- going on to the next key: past it the keys after this one are left alone, and the send is
-- deferred to the slots it holds so far. A held slot is kept as it is: the schedule counted it.
-- Returns {wait in µs until the send may go, 1-based index of the key that imposed it (0: none),
-- then per key the slot held on it (µs; 0: none)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local at, by = now, 0
local slots = {}
for i = 1, #KEYS do slots[i] = 0 end
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[4 * i - 3])
  local burst = tonumber(ARGV[4 * i - 2])
  local slot = tonumber(ARGV[4 * i - 1])
  if slot <= 0 then
    local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
    slot = math.max(tat - interval * burst, at)
    local later = math.max(tat, slot) + interval
    redis.call('SET', key, string.format('%d', later), 'PX', math.ceil((later - now) / 1000) + 1000)
  end
  slots[i] = slot
  if slot > at then at, by = slot, i end
  if at - now > tonumber(ARGV[4 * i]) then break end
end
return {at - now, by, unpack(slots)}
