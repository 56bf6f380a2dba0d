-- A consumer's in-flight list, oldest first, with the 1-based positions of its retry envelopes.
-- KEYS: inflight, attempts
--#include lib/shared.lua
local values = redis.call('LRANGE', KEYS[1], 0, -1)
local oldest_first, retries = {}, {}
for i = #values, 1, -1 do
  oldest_first[#oldest_first + 1] = values[i]
  if retry_tag(KEYS[2], values[i]) then retries[#retries + 1] = #oldest_first end
end
return {oldest_first, retries}
