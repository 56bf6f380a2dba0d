-- claim(K, A): moves up to A[1] more items into the in-flight list, each to the left of what is
-- already held (as LMOVE RIGHT LEFT would): first due retries, straight from the retry set (they
-- run before the backlog, and never pass through the ready list), then the oldest ready items.
-- Stamps the lease and puts the registration back if a reaper removed it (a live consumer whose
-- lease ran out, e.g. in a long Redis outage, must stay visible to recovery); counts every item
-- now in flight as claimed (in-flight is empty before every claim, so its length is exactly this
-- claim, including an item BLMOVE took just before).
-- One RPOP with a count and one LPUSH instead of an LMOVE per item: same effect, far cheaper.
-- Returns {values in claimed order, positions (1-based) of the retry envelopes among them}.
-- K: ready, inflight, lease, retry, stats, consumers, attempts
-- A: n, lease_ms, consumer_id, registration ('' = none)
local function claim(K, A)
  local n = tonumber(A[1])
  local claimed, retries = {}, {}
  if n > 0 then
    local due = redis.call('ZRANGEBYSCORE', K[4], '-inf', now, 'LIMIT', 0, n)
    for _, value in ipairs(due) do
      redis.call('ZREM', K[4], value)
      -- a retry keeps its attempts entry; should Redis have lost it, the envelope still counts
      redis.call('HSETNX', K[7], string.sub(value, 9, 24), 1)
      redis.call('LPUSH', K[2], value)
      claimed[#claimed + 1] = value
      retries[#retries + 1] = #claimed
    end
    if n > #due then
      local fresh = redis.call('RPOP', K[1], n - #due) or {}
      for first = 1, #fresh, 1000 do
        redis.call('LPUSH', K[2], unpack(fresh, first, math.min(first + 999, #fresh)))
      end
      for _, value in ipairs(fresh) do
        claimed[#claimed + 1] = value
        if string.byte(value, 1) == 30 and retry_tag(K[7], value) then
          retries[#retries + 1] = #claimed
        end
      end
    end
  end
  redis.call('SET', K[3], A[3], 'PX', A[2])
  if A[4] ~= '' then redis.call('HSETNX', K[6], A[3], A[4]) end
  local held = redis.call('LLEN', K[2])
  if held > 0 then redis.call('HINCRBY', K[5], 'claimed', held) end
  return {claimed, retries}
end
