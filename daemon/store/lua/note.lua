-- Add one subject to a user's index (index.lua).
-- KEYS: the index. ARGV: the subject, the time now (s), how long subjects are kept (s).
index_add(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return 1
