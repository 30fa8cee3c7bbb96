-- wrk script for scripts/bench.sh: the request of each case, and a check of every status.
-- Configured through the environment:
--   BENCH_METHOD       request method (default GET)
--   BENCH_BODY_FILE    file whose contents are the (JSON) body of every request
--   BENCH_BEARER       if set, every request carries "Authorization: Bearer <it>"
--   BENCH_TOKENS_FILE  one token per line: each request verifies the next one, as
--                      {"token":<token>,"tool_id":BENCH_TOOL_ID}; each of the BENCH_THREADS
--                      wrk threads starts at its own offset
--   BENCH_BEARERS_FILE one token per line: each request carries the next one as
--                      "Authorization: Bearer <token>" (method and body as configured); each
--                      wrk thread starts at its own offset
--   BENCH_DPOP_FILE    one DPoP proof per line, each used once, in order (each wrk thread takes
--                      its own share): with BENCH_DPOP_TOKEN, every request carries the next
--                      proof, in the verify body ({"token","tool_id":BENCH_TOOL_ID,"htm":"POST",
--                      "htu":BENCH_DPOP_HTU,"dpop_proof"}) when BENCH_DPOP_AS=body, or as
--                      "Authorization: DPoP <token>" and a DPoP header (BENCH_DPOP_AS=header,
--                      with BENCH_BODY_FILE as the body)
--   BENCH_EXPECT       the only acceptable status (default 200)
-- done() prints "BENCH_RESULT responses=N unexpected=M first_unexpected=S"; bench.sh fails
-- the run when M is not 0 or N is 0.

local expect = tonumber(os.getenv("BENCH_EXPECT") or "200")
local threads = {}
local next_id = 0

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
local body_file = os.getenv("BENCH_BODY_FILE") or ""
if body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
local bearer = os.getenv("BENCH_BEARER") or ""
if bearer ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. bearer
end

local tokens_file = os.getenv("BENCH_TOKENS_FILE") or ""
local reqs, nreqs, pos

function init(args)
  if tokens_file == "" then
    return
  end
  local tool = assert(os.getenv("BENCH_TOOL_ID"), "BENCH_TOOL_ID unset")
  local headers = { ["Content-Type"] = "application/json" }
  reqs = {}
  for line in io.lines(tokens_file) do
    if line ~= "" then
      -- Formatted once here, so that request() costs no string building.
      reqs[#reqs + 1] = wrk.format("POST", wrk.path, headers,
        '{"token":"' .. line .. '","tool_id":"' .. tool .. '"}')
    end
  end
  nreqs = #reqs
  assert(nreqs > 0, "no tokens in " .. tokens_file)
  pos = math.floor(id * nreqs / tonumber(os.getenv("BENCH_THREADS") or "1"))
end

local dpop_file = os.getenv("BENCH_DPOP_FILE") or ""
if dpop_file ~= "" then
  local dpop_token = assert(os.getenv("BENCH_DPOP_TOKEN"), "BENCH_DPOP_TOKEN unset")
  local as_body = os.getenv("BENCH_DPOP_AS") == "body"
  local base_init = init
  function init(args)
    local proofs = {}
    -- One file per phase (warm-up, measured run): a proof is good once.
    local phase = os.getenv("BENCH_PHASE") or ""
    local file = dpop_file
    if phase ~= "" then
      file = dpop_file .. "." .. phase
    end
    for line in io.lines(file) do
      if line ~= "" then
        proofs[#proofs + 1] = line
      end
    end
    local n = tonumber(os.getenv("BENCH_THREADS") or "1")
    local share = math.floor(#proofs / n)
    reqs = {}
    for i = id * share + 1, (id + 1) * share do
      local proof = proofs[i]
      if as_body then
        reqs[#reqs + 1] = wrk.format("POST", wrk.path, { ["Content-Type"] = "application/json" },
          '{"token":"' .. dpop_token .. '","tool_id":"' .. assert(os.getenv("BENCH_TOOL_ID")) ..
          '","htm":"POST","htu":"' .. assert(os.getenv("BENCH_DPOP_HTU")) ..
          '","dpop_proof":"' .. proof .. '"}')
      else
        reqs[#reqs + 1] = wrk.format(wrk.method, wrk.path,
          { ["Content-Type"] = "application/json", ["Authorization"] = "DPoP " .. dpop_token,
            ["DPoP"] = proof }, wrk.body)
      end
    end
    nreqs = #reqs
    assert(nreqs > 0, "no proofs in " .. dpop_file)
    pos = 0
  end
  -- Each proof once: past the last one the requests repeat, and the replays are refused
  -- (an unexpected status fails the run, so the file must outlast it).
  function request()
    pos = pos % nreqs + 1
    return reqs[pos]
  end
end

local bearers_file = os.getenv("BENCH_BEARERS_FILE") or ""
if bearers_file ~= "" then
  local base_init = init
  function init(args)
    base_init(args)
    local headers = {}
    for k, v in pairs(wrk.headers) do
      headers[k] = v
    end
    reqs = {}
    for line in io.lines(bearers_file) do
      if line ~= "" then
        headers["Authorization"] = "Bearer " .. line
        reqs[#reqs + 1] = wrk.format(wrk.method, wrk.path, headers, wrk.body)
      end
    end
    nreqs = #reqs
    assert(nreqs > 0, "no tokens in " .. bearers_file)
    pos = math.floor(id * nreqs / tonumber(os.getenv("BENCH_THREADS") or "1"))
  end
  function request()
    pos = pos % nreqs + 1
    return reqs[pos]
  end
end

-- Defined only when cycling tokens; otherwise wrk sends its static request.
if tokens_file ~= "" then
  function request()
    pos = pos % nreqs + 1
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
