-- Settles a consumer's oldest claimed items: see lib/settle.lua.
--#include lib/shared.lua
--#include lib/settle.lua
return settle(KEYS, ARGV)
