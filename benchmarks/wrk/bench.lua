-- wrk script of benchmarks/small_requests.py: one kind of request, every status checked.
--   BENCH_KIND    static (the same request), metadata (PUT key=<new value>), tag (PUT <prefix><new tag>)
--   BENCH_METHOD  BENCH_PATH  BENCH_BODY  BENCH_CONTENT_TYPE  BENCH_EXPECT (the status every answer must have)
-- done() prints one line: BENCH {json}, with the requests, latency percentiles (us) and every error.
local kind = os.getenv("BENCH_KIND") or "static"
local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local body = os.getenv("BENCH_BODY")
local content_type = os.getenv("BENCH_CONTENT_TYPE")
local expect = tonumber(os.getenv("BENCH_EXPECT") or "200")
local threads = {}
local counter = 0
local headers = {}
local static

if content_type then headers["Content-Type"] = content_type end

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)  -- a global of that thread's state: unique tag names and values
end

function init(args)
  bad = 0
  first_bad = 0
  static = wrk.format(method, path, headers, body)
end

function request()
  if kind == "static" then
    return static
  end
  counter = counter + 1
  if kind == "metadata" then
    return wrk.format("PUT", path, headers, "bench=" .. id .. "-" .. counter)
  end
  return wrk.format("PUT", path .. id .. "-" .. counter, headers, body)
end

function response(status, hdrs, resp)
  if status ~= expect then
    bad = bad + 1
    if first_bad == 0 then first_bad = status end
  end
end

function done(summary, latency, requests)
  local total, first = 0, 0
  for _, t in ipairs(threads) do
    total = total + t:get("bad")
    if first == 0 then first = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"bad": %d, "first_bad": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    total, first, e.connect, e.read, e.write, e.timeout, e.status))
end
