"""The Lua scripts: each limiter call is one atomic EVALSHA, so replicas never race.

Keys of one subject share the hash tag ``{subject}`` (one Redis Cluster slot)::

    <prefix>{s}:req             zset  request id -> admitted at (ms): the RPM/TPM sliding window
    <prefix>{s}:tok             hash  request id -> tokens charged, for admissions in the window
    <prefix>{s}:tpm             int   sum of :tok (kept so a check costs O(1))
    <prefix>{s}:lease           zset  request id -> lease expiry (ms): in-flight requests
    <prefix>{s}:res             hash  request id -> "<budget window start> <reserved nano-USD>"
    <prefix>{s}:budget:<start>  hash  s = spend, r = reserved (nano-USD) of one budget window
    <prefix>{s}:weight          hash  allotment id -> requests it stands for beyond its own entry
    <prefix>{s}:weights         int   sum of :weight

An allotment is quota one process takes at once and hands out itself (rate_limiter.py): one
entry in each structure standing for up to n requests, dated ``grant_ms`` ahead (the last
moment the process may admit from it), so it stays in the window at least as long as any
request admitted from it. It is only granted while n requests take at most 1/``room`` of
what is left, so near a limit every request is counted here one by one as before. Asked
for alone (``only``, ahead of need), a denial or no room takes nothing.

Exactness: the window is the set of admissions of the last ``window`` ms by Redis's clock
(``TIME``, one clock for every replica), so at most ``rpm_limit`` requests and ``tpm_limit``
tokens are admitted in any window-long interval; pruning is amortised O(1) per request (each
entry is added once and removed once). Expired leases are pruned before each check, returning
their budget reservation if it belongs to the current window, so a crashed replica or a lost
settle can hold a slot for at most the lease TTL. Numbers are integers (tokens, nano-USD)
formatted with ``%d`` so large values never reach Redis in exponent notation.
"""

from __future__ import annotations

ADMIT = """
local function int(x) return string.format('%d', x) end
local id, window = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, est = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local par, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local budget, cost, wstart, expire_at = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10], ARGV[11]
local most, room = tonumber(ARGV[12]), tonumber(ARGV[14])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local windowed, leased = rpm >= 0 or tpm >= 0, par >= 0 or budget >= 0

local count, used, weights = 0, 0, 0
if windowed then
  -- Admissions older than the window leave it, with the tokens and requests they charged.
  weights = tonumber(redis.call('GET', KEYS[8]) or '0')
  local cutoff = now - window
  while true do
    local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 500)
    if #old == 0 then break end
    local freed = 0
    for _, n in ipairs(redis.call('HMGET', KEYS[2], unpack(old))) do
      freed = freed + (tonumber(n) or 0)
    end
    redis.call('ZREM', KEYS[1], unpack(old))
    redis.call('HDEL', KEYS[2], unpack(old))
    if freed ~= 0 then redis.call('DECRBY', KEYS[3], int(freed)) end
    if weights > 0 then
      local left = 0
      for _, n in ipairs(redis.call('HMGET', KEYS[7], unpack(old))) do
        left = left + (tonumber(n) or 0)
      end
      if left ~= 0 then
        redis.call('HDEL', KEYS[7], unpack(old))
        weights = tonumber(redis.call('DECRBY', KEYS[8], int(left)))
      end
    end
  end
  count = redis.call('ZCARD', KEYS[1]) + weights
  used = tonumber(redis.call('GET', KEYS[3]) or '0')
end

local inflight, committed, spent = 0, 0, 0
if leased then
  -- Expired leases free their slot; their reservation is returned if still in this window.
  while true do
    local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 500)
    if #old == 0 then break end
    for _, r in ipairs(redis.call('HMGET', KEYS[5], unpack(old))) do
      if r then
        local w, c = string.match(r, '^(%S+) (%d+)$')
        if w == wstart and c ~= '0' then redis.call('HINCRBY', KEYS[6], 'r', '-' .. c) end
      end
    end
    redis.call('ZREM', KEYS[4], unpack(old))
    redis.call('HDEL', KEYS[5], unpack(old))
  end
  inflight = redis.call('ZCARD', KEYS[4])
end
if budget >= 0 then
  local b = redis.call('HMGET', KEYS[6], 's', 'r')
  spent = tonumber(b[1] or '0')
  committed = spent + tonumber(b[2] or '0')
end

-- Check everything first: a denial takes nothing.
local function oldest_reset()
  local e = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #e == 0 then return 0 end
  return tonumber(e[2]) + window - now
end
if rpm >= 0 and count + 1 > rpm then
  local retry = window
  if weights == 0 then
    local e = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
    if #e > 0 then retry = tonumber(e[2]) + window - now end
  else
    -- Walk the oldest entries, allotments counting their weight (bounded; a hint).
    local excess = count + 1 - rpm
    local e = redis.call('ZRANGE', KEYS[1], 0, 999, 'WITHSCORES')
    for i = 1, #e, 2 do
      excess = excess - 1 - tonumber(redis.call('HGET', KEYS[7], e[i]) or '0')
      retry = tonumber(e[i + 1]) + window - now
      if excess <= 0 then break end
    end
  end
  return {0, 'requests', retry, retry}
end
if tpm >= 0 and used + est > tpm then
  -- Walk the oldest admissions until enough tokens would have left (bounded; a hint).
  local excess, retry = used + est - tpm, window
  local e = redis.call('ZRANGE', KEYS[1], 0, 999, 'WITHSCORES')
  for i = 1, #e, 2 do
    excess = excess - tonumber(redis.call('HGET', KEYS[2], e[i]) or '0')
    retry = tonumber(e[i + 1]) + window - now
    if excess <= 0 then break end
  end
  if est > tpm then retry = window end
  local block = -1
  if used >= tpm then block = oldest_reset() end
  return {0, 'tokens', retry, block}
end
if par >= 0 and inflight >= par then
  return {0, 'parallel_requests', 1000, -1}
end
if budget >= 0 and committed + cost > budget then
  local block = -1
  if spent >= budget then block = 1 end
  return {0, 'budget', -1, block}
end

-- An allotment: as many requests like this one as fit in 1/room of what is left, up to most.
local n, date = 1, now
if most > 1 and par < 0 then
  local fit = most
  if rpm >= 0 then fit = math.min(fit, math.floor((rpm - count) / room)) end
  if tpm >= 0 and est > 0 then fit = math.min(fit, math.floor((tpm - used) / (room * est))) end
  if budget >= 0 and cost > 0 then
    fit = math.min(fit, math.floor((budget - committed) / (room * cost)))
  end
  if fit > 1 then n, id, date = fit, ARGV[13], now + tonumber(ARGV[15]) end
end
-- Asked for an allotment alone (ahead of need, no request waiting): no room is no answer.
if n == 1 and ARGV[16] == '1' then return {3} end

-- Take everything, for n requests (n > 1: one entry, dated at the allotment's last moment).
if windowed then
  redis.call('ZADD', KEYS[1], date, id)
  -- Kept until the last entry could leave the window (an allotment's date is ahead).
  local keep = window + 1000 + tonumber(ARGV[15])
  if n > 1 then
    redis.call('HSET', KEYS[7], id, int(n - 1))
    redis.call('INCRBY', KEYS[8], int(n - 1))
    redis.call('PEXPIRE', KEYS[7], keep)
    redis.call('PEXPIRE', KEYS[8], keep)
  end
  if tpm >= 0 and est > 0 then
    redis.call('HSET', KEYS[2], id, int(n * est))
    redis.call('INCRBY', KEYS[3], int(n * est))
    used = used + n * est
  end
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], keep) end
  count = count + n
end
if leased then
  redis.call('ZADD', KEYS[4], now + ttl, id)
  redis.call('PEXPIRE', KEYS[4], ttl + 60000)
  if budget >= 0 then
    redis.call('HSET', KEYS[5], id, wstart .. ' ' .. int(n * cost))
    redis.call('PEXPIRE', KEYS[5], ttl + 60000)
    redis.call('HINCRBY', KEYS[6], 'r', int(n * cost))
    if expire_at ~= '0' then redis.call('PEXPIREAT', KEYS[6], expire_at) end
    committed = committed + n * cost
  end
end
if n > 1 then return {2, count, used, oldest_reset(), committed, n} end
return {1, count, used, oldest_reset(), committed}
"""

# Settle (actual use) and release (ARGV[2] = ARGV[3] = 0) of one admission, or of an
# allotment (ARGV[8] = the requests admitted from it, 0 for one request). KEYS as ADMIT,
# KEYS[6] being the admission's own budget window.
FINISH = """
local id, tokens, requests = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[8])
local inside = (ARGV[4] == '1' or requests > 0) and redis.call('ZSCORE', KEYS[1], id)
if ARGV[4] == '1' and inside then
  -- Still in the window: the actual tokens replace the reservation.
  local before = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  if tokens ~= before then
    if tokens > 0 then redis.call('HSET', KEYS[2], id, ARGV[2])
    else redis.call('HDEL', KEYS[2], id) end
    redis.call('INCRBY', KEYS[3], string.format('%d', tokens - before))
  end
end
if requests > 0 and inside then
  -- The requests an allotment did not hand out leave the window (unless its weight has
  -- already gone, with the keys' expiry: then so has the allotment).
  local before = tonumber(redis.call('HGET', KEYS[7], id) or '0')
  if before > 0 and requests - 1 ~= before then
    if requests > 1 then redis.call('HSET', KEYS[7], id, requests - 1)
    else redis.call('HDEL', KEYS[7], id) end
    redis.call('INCRBY', KEYS[8], requests - 1 - before)
  end
end
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[4], id)
  if ARGV[6] == '1' then
    local r = redis.call('HGET', KEYS[5], id)
    if r then
      redis.call('HDEL', KEYS[5], id)
      local c = string.match(r, ' (%d+)$')
      if c ~= '0' then redis.call('HINCRBY', KEYS[6], 'r', '-' .. c) end
    end
    if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[6], 's', ARGV[3]) end
    if ARGV[7] ~= '0' then redis.call('PEXPIREAT', KEYS[6], ARGV[7]) end
  end
end
return 1
"""

# Extend a live lease; 0 when it has expired or was released. KEYS: lease, res.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) <= now then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl + 60000)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ttl + 60000) end
return 1
"""
