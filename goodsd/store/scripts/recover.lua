-- Gives a consumer's whole in-flight list back (give_back: retries to the retry set, due now,
-- the rest to the pop end of the ready list, oldest nearest to it) and forgets the consumer.
-- With ARGV[1] = 1 only when its lease is gone (the reaper, racing other masters).
-- When ARGV[2] names a claimed item, that one item (the one a dead child was running) is counted
-- as a failed attempt instead: retried later, or dead when its attempts are used up.
-- KEYS: inflight, lease, consumers, ready, stats, attempts, retry, dead, settled
-- ARGV: only_if_expired, current(''|claimed), tag, tagged, record_head, retries, retry_delay_ms,
--       consumer_id
--#include lib/shared.lua
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local current = ARGV[2]
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local moved, failed = 0, 0
for _, item in ipairs(items) do
  if failed == 0 and current ~= '' and item == current then
    failed = 1
    local attempts = redis.call('HINCRBY', KEYS[6], ARGV[3], 1)
    redis.call('HINCRBY', KEYS[5], 'failed', 1)
    if attempts > tonumber(ARGV[6]) then
      redis.call('HDEL', KEYS[6], ARGV[3])
      redis.call('LPUSH', KEYS[8], ARGV[5] .. attempts .. '}')
      redis.call('HINCRBY', KEYS[5], 'dead', 1)
    else
      redis.call('ZADD', KEYS[7], now + tonumber(ARGV[7]), ARGV[4])
      redis.call('HINCRBY', KEYS[5], 'retried', 1)
    end
  else
    give_back(KEYS[4], KEYS[7], KEYS[6], item)
    moved = moved + 1
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[9])
redis.call('HDEL', KEYS[3], ARGV[8])
if moved > 0 then redis.call('HINCRBY', KEYS[5], 'requeued', moved) end
return moved + failed
