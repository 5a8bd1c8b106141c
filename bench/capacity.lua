-- wrk script for bench/capacity.py: a non-stream chat completion at a fixed offered rate.
--
-- Environment: CAP_KEY (bearer token), CAP_MODEL, CAP_RATE (requests/s for this thread;
-- 0 = closed loop). Slots are on an absolute schedule shared by the thread's connections,
-- so the average rate is exact as long as enough connections are free (the latency clock
-- starts when the request is sent: queueing for a connection is not counted).
-- done() prints one JSON line starting with {"capacity":.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } cap_timespec;
int clock_gettime(int clk_id, cap_timespec *tp);
]])
local ts = ffi.new("cap_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local key = os.getenv("CAP_KEY") or "sk-capacity"
local model = os.getenv("CAP_MODEL") or "gpt-4o-mini"
local rate = tonumber(os.getenv("CAP_RATE") or "0") or 0

wrk.method = "POST"
wrk.body = '{"model": "' .. model .. '", "messages": ['
  .. '{"role": "system", "content": "You are a helpful assistant."}, '
  .. '{"role": "user", "content": "Explain in two sentences why connection pooling lowers '
  .. 'latency for an HTTP proxy that forwards requests to a language model provider."}], '
  .. '"max_tokens": 16, "temperature": 0.7}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

non2xx = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

if rate > 0 then
  local interval = 1000 / rate
  local next_slot = nil
  function delay()
    local now = now_ms()
    if next_slot == nil or next_slot < now - 1000 then
      next_slot = now  -- over a second behind: drop the backlog rather than burst
    end
    local wait = next_slot - now
    next_slot = next_slot + interval
    return wait > 0 and math.floor(wait) or 0
  end
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    '{"capacity":true,"requests":%d,"duration_s":%.6f,"rps":%.3f,'
      .. '"p50_ms":%.4f,"p95_ms":%.4f,"p99_ms":%.4f,"max_ms":%.4f,'
      .. '"socket_errors":%d,"non2xx":%d}\n',
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.connect + e.read + e.write + e.timeout, bad
  ))
end
