-- A settle, then (unless ARGV[1] is '') the next claim, in one script call: a busy consumer's
-- whole round trip per batch. See lib/settle.lua and lib/claim.lua.
-- KEYS: the consumer's (lib/shared.lua)
-- ARGV: the claim's n ('' = no claim), lease_ms, consumer_id, registration; from ARGV[5] on,
--       the settle's
-- Returns {settle result} or {settle result, claim result}.
--#include lib/shared.lua
--#include lib/claim.lua
--#include lib/settle.lua
local K = consumer_keys(KEYS)
local settled = settle(K, ARGV, 5)
if ARGV[1] == '' then return {settled} end
return {settled, claim(K, tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], false)}
