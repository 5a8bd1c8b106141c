-- wrk script: OpenAI chat completions, closed loop or paced at a fixed rate.
--
-- Environment:
--   BENCH_KEY     bearer token sent to the target (default sk-bench-client)
--   BENCH_MODEL   model name in the body (default gpt-4o-mini)
--   BENCH_STREAM  1 = ask for SSE with usage ("stream": true, include_usage)
--   BENCH_RATE    requests/s per wrk thread; unset or 0 = closed loop (no pacing)
--   BENCH_CHECK   1 = read every response: count non-2xx and bodies without the marker
--                 (and, streamed, without "data: [DONE]"); costs wrk some CPU
--   BENCH_MARKER  word the upstream's reply contains (default FASTUPSTREAM)
--   BENCH_VARY    0 = send the same body every time; default: the user message ends with
--                 a per-request number, as real traffic differs (the system prompt does not)
--
-- done() prints one JSON line starting with {"bench":"chat" for bench/run.py to parse.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]])

local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY") or "sk-bench-client"
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local check = os.getenv("BENCH_CHECK") == "1"
local marker = os.getenv("BENCH_MARKER") or "FASTUPSTREAM"

-- Shaped like what the official SDK sends: ~300 bytes, system + user message.
local head = '{"model": "' .. model .. '", "messages": ['
  .. '{"role": "system", "content": "You are a concise assistant. Answer in one short paragraph."}, '
  .. '{"role": "user", "content": "Summarise the trade-offs between pooling HTTP connections '
  .. 'and opening a new connection for every request'
local tail = '."}], "max_tokens": 128, "temperature": 0.2'
if stream then
  tail = tail .. ', "stream": true, "stream_options": {"include_usage": true}'
end
tail = tail .. "}"
local body = head .. tail

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.headers["Accept"] = stream and "text/event-stream" or "application/json"

-- Per-thread counters; done() (main state) reads them through the thread handles.
non2xx = 0
bad_body = 0
checked = 0

local threads = {}

if os.getenv("BENCH_VARY") ~= "0" then
  -- wrk builds each request (on the client's core): the user message differs every time,
  -- and from every earlier run's too (a proxy that remembers prompt token counts must not
  -- find a warm-up's prompts again): the count starts at the clock's seconds x 100,000, so
  -- a run started s seconds later starts s x 100,000 higher, beyond what any earlier run
  -- sent (under 100,000 requests/s).
  local counter = os.time() * 100000
  function request()
    counter = counter + 1
    return wrk.format(nil, nil, nil, head .. " (request " .. counter .. ")" .. tail)
  end
end

function setup(thread)
  table.insert(threads, thread)
end

if rate > 0 then
  -- Paced schedule: slots every 1000/rate ms, shared by this thread's connections.
  -- Each connection, before each request, claims the next free slot and sleeps until it.
  -- wrk starts its latency clock after the delay, so pacing does not inflate latency.
  local interval = 1000 / rate
  local next_slot = nil

  function delay()
    local now = now_ms()
    -- More than a second behind: drop the backlog rather than burst to catch up.
    if next_slot == nil or next_slot < now - 1000 then
      next_slot = now
    end
    local wait = next_slot - now
    next_slot = next_slot + interval
    if wait < 0 then
      return 0
    end
    return math.floor(wait)
  end
end

if check then
  function response(status, headers, resp_body)
    checked = checked + 1
    if status < 200 or status > 299 then
      non2xx = non2xx + 1
      return
    end
    if not resp_body or not resp_body:find(marker, 1, true) then
      bad_body = bad_body + 1
    elseif stream and not resp_body:find("data: [DONE]", 1, true) then
      bad_body = bad_body + 1
    end
  end
end

function done(summary, latency, requests)
  local n2xx, bad, seen = 0, 0, 0
  for _, thread in ipairs(threads) do
    n2xx = n2xx + (thread:get("non2xx") or 0)
    bad = bad + (thread:get("bad_body") or 0)
    seen = seen + (thread:get("checked") or 0)
  end
  if not check then
    -- Without response() wrk only counts statuses above 399.
    n2xx = summary.errors.status
  end
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    '{"bench":"chat","stream":%s,"checked":%s,"rate_target":%.3f,'
      .. '"requests":%d,"duration_s":%.6f,"rps":%.3f,"bytes":%d,'
      .. '"latency_ms":{"mean":%.4f,"stdev":%.4f,"min":%.4f,"max":%.4f,'
      .. '"p50":%.4f,"p90":%.4f,"p99":%.4f,"p999":%.4f},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status_ge_400":%d,'
      .. '"non2xx":%d,"bad_body":%d,"responses_checked":%d}}\n',
    tostring(stream), tostring(check), rate,
    summary.requests, secs, summary.requests / secs, summary.bytes,
    latency.mean / 1000, latency.stdev / 1000, latency.min / 1000, latency.max / 1000,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    e.connect, e.read, e.write, e.timeout, e.status, n2xx, bad, seen
  ))
end
