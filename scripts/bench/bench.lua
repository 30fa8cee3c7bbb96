-- wrk script for scripts/bench.sh. Configured through the environment:
--   BENCH_METHOD       request method (default GET)
--   BENCH_BODY_FILE    file whose contents are the (JSON) request body of every request
--   BENCH_TOKENS_FILE  one token per line: each request verifies the next token, as
--                      {"token":<token>,"tool_id":BENCH_TOOL_ID}; every wrk thread starts
--                      at a different offset (BENCH_THREADS = wrk's -t)
--   BENCH_EXPECT       the only acceptable status (default 200)
-- done() prints "BENCH_RESULT responses=N unexpected=M first_unexpected=S"; bench.sh fails
-- the run when M is not 0 or N is 0.

local expect = tonumber(os.getenv("BENCH_EXPECT") or "200")
local threads = {}
local next_id = 0

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Runs in the main Lua state, once per thread, before the thread's init().
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

-- Per-thread state (every thread has its own Lua state).
responses = 0
unexpected = 0
first_unexpected = 0

wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  wrk.body = slurp(body_file)
  wrk.headers["Content-Type"] = "application/json"
end

local tokens_file = os.getenv("BENCH_TOKENS_FILE")
local reqs, nreqs, pos

function init(args)
  if not tokens_file or tokens_file == "" then
    return
  end
  local tool = assert(os.getenv("BENCH_TOOL_ID"), "BENCH_TOOL_ID unset")
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  local headers = { ["Content-Type"] = "application/json" }
  reqs = {}
  for line in io.lines(tokens_file) do
    if line ~= "" then
      local body = '{"token":"' .. line .. '","tool_id":"' .. tool .. '"}'
      -- Pre-format every request so that request() costs no string building.
      reqs[#reqs + 1] = wrk.format("POST", wrk.path, headers, body)
    end
  end
  nreqs = #reqs
  assert(nreqs > 0, "no tokens in " .. tokens_file)
  pos = math.floor(id * nreqs / nthreads) -- 0-based
end

-- Only defined in token-cycling mode; otherwise wrk sends its static request.
if tokens_file and tokens_file ~= "" then
  function request()
    pos = pos + 1
    if pos > nreqs then
      pos = 1
    end
    return reqs[pos]
  end
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= expect then
    unexpected = unexpected + 1
    if first_unexpected == 0 then
      first_unexpected = status
    end
  end
end

function done(summary, latency, requests)
  local n, bad, first = 0, 0, 0
  for _, t in ipairs(threads) do
    n = n + t:get("responses")
    bad = bad + t:get("unexpected")
    local f = t:get("first_unexpected")
    if first == 0 and f ~= 0 then
      first = f
    end
  end
  io.write(string.format("BENCH_RESULT responses=%d unexpected=%d first_unexpected=%d expect=%d\n",
    n, bad, first, expect))
end
