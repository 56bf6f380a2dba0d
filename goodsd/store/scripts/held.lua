-- A consumer's in-flight list, oldest first, with the 1-based positions of its retry envelopes
-- (negative for suspects, as a claim gives them).
-- KEYS: the consumer's (lib/shared.lua)
--#include lib/shared.lua
local K = consumer_keys(KEYS)
local values = redis.call('LRANGE', K.inflight, 0, -1)
local oldest_first, retries = {}, {}
for i = #values, 1, -1 do
  oldest_first[#oldest_first + 1] = values[i]
  local tag = retry_tag(K.attempts, values[i])
  if tag then retries[#retries + 1] = retry_position(K, tag, #oldest_first) end
end
return {oldest_first, retries}
