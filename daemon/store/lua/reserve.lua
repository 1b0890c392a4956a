-- Reserve one send slot on every limiter key at the same instant (GCRA, on Redis's own clock).
-- KEYS: the limiter keys. ARGV: the longest wait worth reserving (µs), then per key its interval
-- (µs) and burst (slots allowed ahead of time). Reserves nothing when the wait is longer than
-- allowed. Returns {wait in µs, 1-based index of the key that imposed it (0: none), 1 if reserved}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait, by = 0, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local this_wait = tat - interval * burst - now
  if this_wait > wait then wait, by = this_wait, i end
end
if wait > tonumber(ARGV[1]) then return {wait, by, 0} end
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now + wait)
  redis.call('SET', key, string.format('%d', tat + interval), 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
end
return {wait, by, 1}
