-- Compare-and-extend: 1 when the caller still held the lock and now holds it ttl_ms longer.
-- KEYS: lock   ARGV: token, ttl_ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
