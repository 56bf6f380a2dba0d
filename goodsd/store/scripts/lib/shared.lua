-- Routines shared by the consumer-side scripts; an entry script includes this file first.

-- Server time in milliseconds, for lease and retry arithmetic: one clock for every host.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- The tag of a retry envelope, or nil for any other value. A value is a retry only when it has
-- the envelope's exact shape and the attempts hash (KEY) holds its tag: bytes someone pushed that
-- merely look like an envelope (a made-up or mangled tag) are an ordinary item.
local function retry_tag(attempts, value)
  if string.byte(value, 1) ~= 30 or #value < 25 then return nil end
  if string.sub(value, 1, 8) ~= '\30goodsd:' then return nil end
  if string.sub(value, 25, 25) ~= ':' then return nil end
  local tag = string.sub(value, 9, 24)
  if not string.find(tag, '^[0-9a-f]+$') then return nil end
  if redis.call('HEXISTS', attempts, tag) == 1 then return tag end
  return nil
end

-- An unstarted value back where it came from, to be taken next: a retry to the retry set (due
-- now; claims take due retries first), anything else to the pop end of the ready list.
local function give_back(ready, retry, attempts, value)
  if retry_tag(attempts, value) then
    redis.call('ZADD', retry, now, value)
  else
    redis.call('RPUSH', ready, value)
  end
end
