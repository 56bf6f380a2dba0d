-- A consumer's in-flight list, oldest first, with the 1-based positions of its retry envelopes.
-- KEYS: the consumer's (lib/shared.lua)
--#include lib/shared.lua
local K = consumer_keys(KEYS)
local values = redis.call('LRANGE', K.inflight, 0, -1)
local oldest_first, retries = {}, {}
for i = #values, 1, -1 do
  oldest_first[#oldest_first + 1] = values[i]
  if retry_tag(K.attempts, values[i]) then retries[#retries + 1] = #oldest_first end
end
return {oldest_first, retries}
