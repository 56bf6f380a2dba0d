-- Routines shared by the consumer-side scripts; an entry script includes this file first.

-- Server time in milliseconds, for lease and retry arithmetic: one clock for every host.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A consumer's keys by name: every consumer-side script takes the same KEYS, in the order
-- goodsd.store.keys.QueueKeys.consumer gives them.
local function consumer_keys(keys)
  return {
    ready = keys[1], inflight = keys[2], lease = keys[3], settled = keys[4],
    consumers = keys[5], attempts = keys[6], retry = keys[7], dead = keys[8], stats = keys[9],
    suspects = keys[10],
  }
end

-- Adds n (when there is anything to add) to one of the fleet counters.
local function count(K, field, n)
  if n > 0 then redis.call('HINCRBY', K.stats, field, n) end
end

-- The tag of a retry envelope, or nil for any other value. A value is a retry only when it has
-- the envelope's exact shape and the attempts hash holds its tag: bytes someone pushed that
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
local function give_back(K, value)
  if retry_tag(K.attempts, value) then
    redis.call('ZADD', K.retry, now, value)
  else
    redis.call('RPUSH', K.ready, value)
  end
end

-- The 1-based position a claim reports for a retry envelope with this tag among what it took:
-- negative for a suspect (see suspect_delivery), which its consumer runs alone.
local function retry_position(K, tag, position)
  if redis.call('HEXISTS', K.suspects, tag) == 1 then return -position end
  return position
end

-- A delivery that was running beside others when its worker died (a crash, or a kill for no
-- heartbeat): any of them may have killed it, so none counts a failed attempt; each is marked
-- suspect instead (tag -> the consumer that died), to run alone next time, and waits in the
-- retry set as its envelope, due now (the attempts hash must hold its tag for the envelope to
-- count as a retry; a tag that failed before keeps its count). The mark goes when the delivery
-- is done or fails (settle.lua, fail_delivery); a give-back keeps it.
local function suspect_delivery(K, tag, envelope, consumer)
  redis.call('HSETNX', K.attempts, tag, 0)
  redis.call('HSET', K.suspects, tag, consumer)
  redis.call('ZADD', K.retry, now, envelope)
end

-- One failed attempt of a delivery: counted under its tag; then it waits in the retry set (as
-- its envelope) until delay_ms from now, or, when final (malformed) or its retries are used up,
-- goes to the dead list as its record's head completed with the attempts count. The one place
-- that decides "retry or dead", for settles and for requeues alike. Returns true when dead.
local function fail_delivery(K, tag, envelope, head, final, retries, delay_ms)
  redis.call('HDEL', K.suspects, tag)  -- it failed on its own: it no longer needs to run alone
  local attempts = redis.call('HINCRBY', K.attempts, tag, 1)
  if final or attempts > retries then
    redis.call('HDEL', K.attempts, tag)
    redis.call('LPUSH', K.dead, head .. attempts .. '}')
    return true
  end
  redis.call('ZADD', K.retry, now + delay_ms, envelope)
  return false
end
