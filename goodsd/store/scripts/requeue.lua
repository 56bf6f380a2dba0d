-- Gives a consumer's whole in-flight list back (give_back: retries to the retry set, due now,
-- the rest to the pop end of the ready list, oldest nearest to it) and forgets the consumer.
-- With ARGV[1] = '1' only when its lease is gone (a lease check, racing other masters); then
-- returns -1, changing nothing, while the lease lives.
-- The items it was running when it died are named by their claimed value (each name takes the
-- first held value equal to it, newest first): a blamed one counts a failed attempt instead
-- (fail_delivery), with its tag, envelope, record head and final flag; a suspect one goes to
-- the retry set as a suspect (suspect_delivery), with its tag and envelope. Returns how many
-- items it handled.
-- KEYS: the consumer's (lib/shared.lua)
-- ARGV: only_if_expired, consumer_id, retries, retry_delay_ms, n_blamed, then 5 per blamed
--       item: claimed value, tag, envelope, record head, final; then 3 per suspect item:
--       claimed value, tag, envelope
--#include lib/shared.lua
local K = consumer_keys(KEYS)
if ARGV[1] == '1' and redis.call('EXISTS', K.lease) == 1 then return -1 end
local retries, delay = tonumber(ARGV[3]), tonumber(ARGV[4])
local suspects_at = 6 + 5 * tonumber(ARGV[5])
-- claimed value -> the argument positions of the named items that hold it
local function positions_of(first, last, step)
  local named = {}
  for a = first, last, step do
    local positions = named[ARGV[a]] or {}
    positions[#positions + 1] = a
    named[ARGV[a]] = positions
  end
  return named
end
local blamed = positions_of(6, suspects_at - 1, 5)
local suspects = positions_of(suspects_at, #ARGV, 3)
local items = redis.call('LRANGE', K.inflight, 0, -1)
local moved, failed, dead = 0, 0, 0
for _, item in ipairs(items) do
  local positions, suspect = blamed[item], suspects[item]
  if positions and #positions > 0 then
    local a = table.remove(positions)
    failed = failed + 1
    local final = ARGV[a + 4] == '1'
    if fail_delivery(K, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], final, retries, delay) then
      dead = dead + 1
    end
  elseif suspect and #suspect > 0 then
    local a = table.remove(suspect)
    suspect_delivery(K, ARGV[a + 1], ARGV[a + 2], ARGV[2])
    moved = moved + 1
  else
    give_back(K, item)
    moved = moved + 1
  end
end
redis.call('DEL', K.inflight, K.lease, K.settled)
redis.call('HDEL', K.consumers, ARGV[2])
count(K, 'requeued', moved)
count(K, 'failed', failed)
count(K, 'retried', failed - dead)
count(K, 'dead', dead)
return moved + failed
