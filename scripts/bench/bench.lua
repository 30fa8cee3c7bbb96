-- wrk script for scripts/bench.sh. Configured through the environment:
--   BENCH_METHOD       request method (default GET)
--   BENCH_BODY_FILE    file whose contents are the (JSON) request body of every request
--   BENCH_TOKENS_FILE  one token per line: each request verifies the next token, as
--                      {"token":<token>,"tool_id":BENCH_TOOL_ID}; every wrk thread starts
--                      at a different offset (BENCH_THREADS = wrk's -t)
--   BENCH_BEARER       if set, every request carries "Authorization: Bearer <it>"
--   BENCH_MODE         "register" or "signal": every request POSTs a body of its own (unique
--                      per run, thread and request; BENCH_RUN names the run):
--                        register: {"tool_id":"bench-<run>-<thread>-<n>",
--                                   "resource_uri":"https://bench.example.com/t/<run>-<thread>-<n>"}
--                        signal:   a dev-mode (unsigned JSON) session-revoked SET with
--                                  jti "bench-<run>-<thread>-<n>" and its own subject
--                                  wimse://dev.local/ns/bench/sa/sig-<run>-<thread>-<n>
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

local bearer = os.getenv("BENCH_BEARER")
if bearer and bearer ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. bearer
end

local tokens_file = os.getenv("BENCH_TOKENS_FILE")
local mode = os.getenv("BENCH_MODE") or ""
local run = os.getenv("BENCH_RUN") or "run"
local reqs, nreqs, pos
local counter, iat, prefix

function init(args)
  if mode == "register" or mode == "signal" then
    counter = 0
    iat = os.time()
    prefix = run .. "-" .. id .. "-"
    return
  end
  assert(mode == "", "unknown BENCH_MODE " .. mode)
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

local json_headers = { ["Content-Type"] = "application/json" }
local SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"

-- Only defined in the token-cycling and unique-body modes; otherwise wrk sends its static
-- request.
if mode == "register" then
  function request()
    counter = counter + 1
    local key = prefix .. counter
    return wrk.format("POST", wrk.path, json_headers,
      '{"tool_id":"bench-' .. key .. '","resource_uri":"https://bench.example.com/t/' .. key .. '"}')
  end
elseif mode == "signal" then
  function request()
    counter = counter + 1
    local key = prefix .. counter
    return wrk.format("POST", wrk.path, json_headers,
      '{"iss":"https://siem.example.com","jti":"bench-' .. key .. '","iat":' .. iat ..
      ',"sub_id":{"format":"uri","uri":"wimse://dev.local/ns/bench/sa/sig-' .. key .. '"}' ..
      ',"events":{"' .. SESSION_REVOKED .. '":{}}}')
  end
elseif tokens_file and tokens_file ~= "" then
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
