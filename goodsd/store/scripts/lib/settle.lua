-- settle(K, A): records the outcome of the oldest n claimed items (the right end of the
-- in-flight list, where the consumer works from) in one round trip; A[4] has one letter per
-- item, oldest first: d = done, f = failed, r = give back unstarted. Idempotent: a retry after a
-- lost reply finds its settle id already recorded and changes nothing. Returns -1, changing
-- nothing, when the list no longer matches the consumer's view (fewer than n items, or another
-- oldest item): its lease lapsed and a reaper took them, or Redis lost recent writes (a
-- failover); the consumer then gives back whatever it holds and starts afresh.
-- K: inflight, attempts, retry, dead, stats, ready, settled
-- A: settle_id, retries, retry_delay_ms, outcomes, oldest claimed value, n_done_tags,
--    done_tags..., then per failure (in order): tag, tagged, record_head, final
local function settle(K, A)
  if redis.call('GET', K[7]) == A[1] then return 0 end
  local outcomes = A[4]
  local n = #outcomes
  if redis.call('LLEN', K[1]) < n or redis.call('LINDEX', K[1], -1) ~= A[5] then return -1 end
  redis.call('SET', K[7], A[1], 'PX', 3600000)
  local n_tags = tonumber(A[6])
  for a = 7, 6 + n_tags do redis.call('HDEL', K[2], A[a]) end
  local done = select(2, string.gsub(outcomes, 'd', ''))
  if done > 0 then redis.call('HINCRBY', K[5], 'done', done) end
  if done == n then
    redis.call('LTRIM', K[1], 0, -(n + 1))
    return n
  end
  local items = redis.call('LRANGE', K[1], -n, -1)
  local retries, delay = tonumber(A[2]), tonumber(A[3])
  local release, a = {}, 7 + n_tags
  local failed, retried, dead = 0, 0, 0
  for k = 1, n do
    local item, outcome = items[n - k + 1], string.sub(outcomes, k, k)
    if outcome == 'd' then
      -- counted above; its attempts entry, if any, is gone
    elseif outcome == 'r' then
      release[#release + 1] = item
    else
      local tag, tagged, head, final = A[a], A[a + 1], A[a + 2], A[a + 3]
      a = a + 4
      failed = failed + 1
      local attempts = redis.call('HINCRBY', K[2], tag, 1)
      if final == '1' or attempts > retries then
        redis.call('HDEL', K[2], tag)
        redis.call('LPUSH', K[4], head .. attempts .. '}')
        dead = dead + 1
      else
        redis.call('ZADD', K[3], now + delay, tagged)
        retried = retried + 1
      end
    end
  end
  for j = #release, 1, -1 do give_back(K[6], K[3], K[2], release[j]) end
  redis.call('LTRIM', K[1], 0, -(n + 1))
  if failed > 0 then redis.call('HINCRBY', K[5], 'failed', failed) end
  if retried > 0 then redis.call('HINCRBY', K[5], 'retried', retried) end
  if dead > 0 then redis.call('HINCRBY', K[5], 'dead', dead) end
  if #release > 0 then redis.call('HINCRBY', K[5], 'requeued', #release) end
  return n
end
