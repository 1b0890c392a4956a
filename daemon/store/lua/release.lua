-- Give a slot back (a send that did not happen). KEYS: the limiter keys. ARGV: their intervals (µs).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat > now then
    redis.call('SET', key, string.format('%d', math.max(now, tat - tonumber(ARGV[i]))), 'KEEPTTL')
  end
end
return 1
