-- settle(K, A, first): records the outcomes of some of what a consumer holds, any subset of its
-- in-flight list, in one round trip. Its arguments are those of A from position first on:
--   settle_id, kept (how many other values the consumer goes on holding), retries,
--   retry_delay_ms, n_done, n_done_tags, n_failed, n_given_back,
--   the claimed values done (only when kept > 0: else the whole list goes),
--   the tags among the done (of items that had failed before or are suspects: their attempts
--   entries and suspect marks go),
--   5 per failure (claimed value, tag, envelope, record head, final),
--   the claimed values given back unstarted, oldest first.
-- A value is taken out of the in-flight list by value (LREM with a count of 1: equal values
-- are interchangeable), so what is settled need not be the oldest items.
-- Idempotent: a retry after a lost reply finds its settle id already recorded and returns 0,
-- changing nothing but that record's time to live. Returns -1, changing nothing, when the list is no longer what the consumer
-- holds: it holds more or fewer values than those settled and kept, or a value acted on by
-- value is not there (its lease lapsed and a lease check requeued them, or Redis lost recent writes in
-- a failover); the consumer then gives back whatever it holds and starts afresh. Else returns
-- how many values it settled.
-- When nothing stays held, the done values are not looked for, one by one, on the hot path:
-- only this consumer's own scripts fill its list, so a list of the right length is the one it
-- holds, or one a failover took back to an earlier claim (whose items were done then, while
-- those of the lost claim are back in the ready list); deleting it loses nothing.

-- Whether the in-flight list holds each of values, as many times as it is named. Looked for
-- from the oldest end (RANK -1), where what is settled usually is: a consumer running many
-- items at once holds a long list, and its finished items are mostly its oldest.
local function holds_all(K, values)
  local wanted = {}
  for _, value in ipairs(values) do wanted[value] = (wanted[value] or 0) + 1 end
  for value, times in pairs(wanted) do
    if #redis.call('LPOS', K.inflight, value, 'RANK', -1, 'COUNT', times) < times then
      return false
    end
  end
  return true
end

local function settle(K, A, first)
  local settle_id = A[first]
  if redis.call('GET', K.settled) == settle_id then
    -- a write all the same, so a WAIT after this retry covers the first try too
    redis.call('PEXPIRE', K.settled, 3600000)
    return 0
  end
  local kept = tonumber(A[first + 1])
  local retries, delay = tonumber(A[first + 2]), tonumber(A[first + 3])
  local n_done, n_tags = tonumber(A[first + 4]), tonumber(A[first + 5])
  local n_failed, n_back = tonumber(A[first + 6]), tonumber(A[first + 7])
  local n = n_done + n_failed + n_back
  -- where each part of the arguments starts
  local done_at = first + 8
  local tags_at = done_at + (kept > 0 and n_done or 0)
  local failed_at = tags_at + n_tags
  local back_at = failed_at + 5 * n_failed
  local back_end = back_at + n_back
  -- the values acted on one by one: all of them when some stay held
  local named = {}
  for a = done_at, tags_at - 1 do named[#named + 1] = A[a] end
  for a = failed_at, back_at - 1, 5 do named[#named + 1] = A[a] end
  for a = back_at, back_end - 1 do named[#named + 1] = A[a] end
  if redis.call('LLEN', K.inflight) ~= n + kept or not holds_all(K, named) then return -1 end
  redis.call('SET', K.settled, settle_id, 'PX', 3600000)
  if kept == 0 then
    redis.call('DEL', K.inflight)  -- all of it: the usual end of a batch
  else
    for _, value in ipairs(named) do redis.call('LREM', K.inflight, -1, value) end
  end
  for a = tags_at, failed_at - 1 do
    redis.call('HDEL', K.attempts, A[a])
    redis.call('HDEL', K.suspects, A[a])
  end
  local dead = 0
  for a = failed_at, back_at - 1, 5 do
    if fail_delivery(K, A[a + 1], A[a + 2], A[a + 3], A[a + 4] == '1', retries, delay) then
      dead = dead + 1
    end
  end
  -- newest first, so that the oldest ends nearest the pop end and is taken first
  for a = back_end - 1, back_at, -1 do give_back(K, A[a]) end
  count(K, 'done', n_done)
  count(K, 'failed', n_failed)
  count(K, 'retried', n_failed - dead)
  count(K, 'dead', dead)
  count(K, 'requeued', n_back)
  return n
end
