-- wrk script: POST the body in $BENCH_BODY to the URL; print one JSON line of results at the end.
-- $BENCH_HEADER_LENGTH sets Inference-Header-Content-Length (binary tensor extension);
-- $BENCH_COUNT_STATUS=1 counts responses by status (slower: a Lua call per response).
local body_path = os.getenv("BENCH_BODY")
local file = assert(io.open(body_path, "rb"))
local body = file:read("*a")
file:close()
local header_length = os.getenv("BENCH_HEADER_LENGTH") or ""
local count_status = os.getenv("BENCH_COUNT_STATUS") == "1"
local token = os.getenv("BENCH_TOKEN") or ""

wrk.method = "POST"
wrk.body = body
if header_length ~= "" then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = header_length
else
  wrk.headers["Content-Type"] = "application/json"
end
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

if count_status then
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local seen = thread:get("statuses")
    if seen then
      for status, n in pairs(seen) do
        counts[status] = (counts[status] or 0) + n
      end
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p95_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max,
    table.concat(parts, ",")))
end
