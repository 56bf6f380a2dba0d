-- One producer batch, pushed only while the ready list is below the high watermark. The length
-- check and the push are one step, so however many producers race on however many hosts, the
-- list ends at most one batch above the mark. Idempotent per batch id: a retry after a lost
-- reply finds the id recorded and pushes nothing. With a token, only the holder of the
-- singleton lock may push. Returns {status, length after}: 1 pushed (now or by an earlier try),
-- 0 refused (the list is full), -1 not the lock holder.
-- KEYS: ready, stats, pushed marker, lock   ARGV: high, batch_id, marker_ttl_ms, token, items...
local len = redis.call('LLEN', KEYS[1])
if redis.call('GET', KEYS[3]) == ARGV[2] then
  -- a write all the same, so a WAIT after this retry covers the first try's push too
  -- (replicas apply writes in order)
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  return {1, len}
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then return {-1, len} end
if len >= tonumber(ARGV[1]) then return {0, len} end
for first = 5, #ARGV, 1000 do
  len = redis.call('LPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
redis.call('HINCRBY', KEYS[2], 'pushed', #ARGV - 4)
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return {1, len}
