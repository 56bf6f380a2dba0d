-- Claims up to ARGV[1] items for a consumer: see lib/claim.lua.
-- KEYS: the consumer's (lib/shared.lua)
-- ARGV: n, lease_ms, consumer_id, registration, and '1' when it follows a BLMOVE (after_block)
-- Returns lib/claim.lua's reply; when it claimed nothing, a third element: milliseconds until
-- the earliest retry is due, or -1 when none waits (a blocking claim waits no longer than that).
--#include lib/shared.lua
--#include lib/claim.lua
local K = consumer_keys(KEYS)
local reply = claim(K, tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1')
if #reply[1] == 0 then
  local earliest = redis.call('ZRANGEBYSCORE', K.retry, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  reply[3] = earliest[2] and math.max(tonumber(earliest[2]) - now, 0) or -1
end
return reply
