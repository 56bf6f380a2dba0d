-- SET NX PX with a random token; holding it already (a retry after a lost reply) extends it.
-- Returns 0 when the caller holds the lock now, else the holder's milliseconds left (a full
-- TTL for a lock someone set without expiry, so standbys never poll it in a tight loop).
-- KEYS: lock   ARGV: token, ttl_ms
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then return tonumber(ARGV[2]) end
return left
