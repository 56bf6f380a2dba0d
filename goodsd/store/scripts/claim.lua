-- Claims up to ARGV[1] items for a consumer: see lib/claim.lua.
-- KEYS: the consumer's (lib/shared.lua)   ARGV: n, lease_ms, consumer_id, registration
--#include lib/shared.lua
--#include lib/claim.lua
local K = consumer_keys(KEYS)
return claim(K, tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4])
