-- Compare-and-delete, then leave one wake-up in the wake list, so a standby blocked on it takes
-- over at once instead of at its next poll. KEYS: lock, wake   ARGV: token, wake_ttl_ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
