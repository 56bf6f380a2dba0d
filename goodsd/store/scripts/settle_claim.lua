-- A settle and the next claim in one script call: a busy consumer's whole round trip per batch.
-- KEYS: the settle's 7, then the claim's 7   ARGV: n_settle_args, settle args..., claim args...
-- Returns {settle result, claim result}.
--#include lib/shared.lua
--#include lib/settle.lua
--#include lib/claim.lua
local split = tonumber(ARGV[1])
local settle_args, claim_args = {}, {}
for i = 2, split + 1 do settle_args[#settle_args + 1] = ARGV[i] end
for i = split + 2, #ARGV do claim_args[#claim_args + 1] = ARGV[i] end
local settle_keys = {KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}
local claim_keys = {KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14]}
return {settle(settle_keys, settle_args), claim(claim_keys, claim_args)}
