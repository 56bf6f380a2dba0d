-- Claims up to ARGV[1] items for a consumer: see lib/claim.lua.
--#include lib/shared.lua
--#include lib/claim.lua
return claim(KEYS, ARGV)
