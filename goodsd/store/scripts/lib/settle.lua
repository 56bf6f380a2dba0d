-- settle(K, A, first): records the outcome of the oldest n claimed items (the right end of the
-- in-flight list, where the consumer works from) in one round trip. Its arguments are those of
-- A from position first on: settle_id, retries, retry_delay_ms, outcomes (one letter per item,
-- oldest first: d = done, f = failed, r = give back unstarted), the oldest claimed value,
-- n_done_tags, the done tags, then per failure (in order): tag, envelope, record head, final.
-- Idempotent: a retry after a lost reply finds its settle id already recorded and returns 0,
-- changing nothing. Returns -1, changing nothing, when the list no longer matches the
-- consumer's view (fewer than n items, or another oldest item): its lease lapsed and a reaper
-- took them, or Redis lost recent writes (a failover); the consumer then gives back whatever it
-- holds and starts afresh. Else returns n.
local function settle(K, A, first)
  local settle_id, outcomes = A[first], A[first + 3]
  if redis.call('GET', K.settled) == settle_id then return 0 end
  local n = #outcomes
  if redis.call('LLEN', K.inflight) < n or redis.call('LINDEX', K.inflight, -1) ~= A[first + 4] then
    return -1
  end
  redis.call('SET', K.settled, settle_id, 'PX', 3600000)
  local tags_at = first + 6
  local failed_at = tags_at + tonumber(A[first + 5])
  for a = tags_at, failed_at - 1 do redis.call('HDEL', K.attempts, A[a]) end
  local done = select(2, string.gsub(outcomes, 'd', ''))
  count(K, 'done', done)
  if done == n then
    redis.call('LTRIM', K.inflight, 0, -(n + 1))
    return n
  end
  local items = redis.call('LRANGE', K.inflight, -n, -1)
  local retries, delay = tonumber(A[first + 1]), tonumber(A[first + 2])
  local release, a = {}, failed_at
  local failed, dead = 0, 0
  for k = 1, n do
    local item, outcome = items[n - k + 1], string.sub(outcomes, k, k)
    if outcome == 'r' then
      release[#release + 1] = item
    elseif outcome == 'f' then
      failed = failed + 1
      if fail_delivery(K, A[a], A[a + 1], A[a + 2], A[a + 3] == '1', retries, delay) then
        dead = dead + 1
      end
      a = a + 4
    end
  end
  for j = #release, 1, -1 do give_back(K, release[j]) end
  redis.call('LTRIM', K.inflight, 0, -(n + 1))
  count(K, 'failed', failed)
  count(K, 'retried', failed - dead)
  count(K, 'dead', dead)
  count(K, 'requeued', #release)
  return n
end
