-- Give a message (a business send) its place in its user's order, unless it has one (order.lua).
-- KEYS: the order set. ARGV: the message id, its place (µs), the order's TTL (s).
order_place(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return 1
