-- Moves dead records back to the pop end as their raw item (untagged, so attempts start over).
-- Each record is removed by value first, so two operators can never requeue the same one twice.
-- KEYS: dead, ready   ARGV: record, item, record, item, ...
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
