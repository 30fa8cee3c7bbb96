#!/usr/bin/env bash
# End to end for the guard crate's two examples, each a tool server with the guard in process:
#   examples/hyper_tool.rs  (hyper, `Protected`),  driven with curl;
#   examples/rmcp_tool.rs   (the official Rust MCP SDK behind `GuardLayer::mcp`), driven with
#                           the official MCP Python SDK's client (scripts/e2e/mcp_client.py).
# For each: a call with its tool's token is allowed; the same call with another tool's token is
# refused 401 `audience mismatch` (with the example's own resource_metadata); after a subject
# revocation in toolgate the call is refused as soon as the guard's next poll has seen it.
# Exits non-zero if any expectation fails. Loopback only; bounded; every process is stopped on
# exit; no token is ever printed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${TOOLGATE_E2E_VENV:-$ROOT/target/e2e-venv}"
began=$(date +%s)

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import mcp' 2>/dev/null; then
  echo "== creating $VENV with the MCP Python SDK"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'mcp>=2,<3'
fi
PY="$VENV/bin/python"

echo "== building toolgate and the guard examples (release)"
cargo build --release --bin toolgate
cargo build --release -p toolgate-guard --features tower --example hyper_tool --example rmcp_tool
TG_BIN="$ROOT/target/release/toolgate"
EXAMPLES="$ROOT/target/release/examples"
built=$(date +%s)

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# The URL a server announced in its log ("listening on http://ADDR"), within 10 s.
listening_url() { # LOG PID
  for _ in $(seq 1 200); do
    local url
    url=$(grep -o -m1 'listening on http://[0-9.:]*' "$1" 2>/dev/null | sed 's/^listening on //') || true
    if [ -n "$url" ]; then echo "$url"; return 0; fi
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  echo "FAIL: no 'listening on' line in $1" >&2; tail -n 20 "$1" >&2; return 1
}

"$TG_BIN" serve --dev --listen 127.0.0.1:0 --db "$tmp/toolgate.db" >"$tmp/toolgate.log" 2>&1 & pids+=($!)
TG=$(listening_url "$tmp/toolgate.log" "${pids[-1]}")
echo "== toolgate at $TG"

BASE=https://mcp.example.com/servers
reg() { curl -sf --max-time 5 -X POST "$TG/v1/tools" -H 'Content-Type: application/json' -d "$1" >/dev/null; }
reg "{\"tool_id\":\"echo\",\"resource_uri\":\"$BASE/guard-hyper/tools/echo\",\"server_id\":\"guard-hyper\"}"
reg "{\"tool_id\":\"whoami\",\"resource_uri\":\"$BASE/guard-hyper/tools/whoami\",\"server_id\":\"guard-hyper\"}"
reg "{\"tool_id\":\"code_search\",\"resource_uri\":\"$BASE/guard-rmcp/tools/code_search\",\"server_id\":\"guard-rmcp\"}"
reg "{\"tool_id\":\"sql_admin\",\"resource_uri\":\"$BASE/guard-rmcp/tools/sql_admin\",\"server_id\":\"guard-rmcp\"}"

"$EXAMPLES/hyper_tool" --toolgate "$TG" --resource "$BASE/guard-hyper" --server-id guard-hyper \
  >"$tmp/hyper.log" 2>&1 & pids+=($!)
HYPER=$(listening_url "$tmp/hyper.log" "${pids[-1]}")
"$EXAMPLES/rmcp_tool" --toolgate "$TG" --resource "$BASE/guard-rmcp" --server-id guard-rmcp \
  >"$tmp/rmcp.log" 2>&1 & pids+=($!)
RMCP=$(listening_url "$tmp/rmcp.log" "${pids[-1]}")
echo "== hyper_tool at $HYPER, rmcp_tool at $RMCP/mcp"

stub() { printf '%s.%s.stub' "$(printf '{"alg":"none"}' | base64 | tr -d '=\n' | tr '/+' '_-')" "$(printf '{"sub":"%s"}' "$1" | base64 | tr -d '=\n' | tr '/+' '_-')"; }
token() { timeout 30 "$TG_BIN" token exchange --url "$TG" --audience "$1" --subject-token "$(stub agent-guard)"; }
ECHO_TOKEN=$(token "$BASE/guard-hyper/tools/echo")
WHOAMI_TOKEN=$(token "$BASE/guard-hyper/tools/whoami")
SEARCH_TOKEN=$(token "$BASE/guard-rmcp/tools/code_search")
SQL_TOKEN=$(token "$BASE/guard-rmcp/tools/sql_admin")
# The subject toolgate put in the tokens (the payload's `sub`; the token itself is never shown).
SUB=$(printf '%s' "$ECHO_TOKEN" | cut -d. -f2 | python3 -c 'import base64,json,sys; s=sys.stdin.read().strip(); print(json.loads(base64.urlsafe_b64decode(s+"="*(-len(s)%4)))["sub"])')

fail=0
pass() { echo "PASS $1"; }
flunk() { echo "FAIL $1"; fail=1; }

# curl with the token as a header read from stdin (never on a command line): writes the body
# to $tmp/body and the headers to $tmp/headers, prints the status.
call() { # TOKEN METHOD URL [DATA]
  local data=()
  [ $# -ge 4 ] && data=(-H 'Content-Type: application/json' --data-binary "$4")
  printf 'Authorization: Bearer %s\n' "$1" |
    curl -s --max-time 10 -H @- -X "$2" "${data[@]}" -D "$tmp/headers" -o "$tmp/body" -w '%{http_code}' "$3" || echo 000
}
challenge() { grep -i '^www-authenticate:' "$tmp/headers" | sed 's/^[^:]*: *//' | tr -d '\r'; }
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$tmp/body" "$1" 2>/dev/null || true; }

# ------------------------------------------------------------------------------------------
echo "== hyper_tool (Protected), with curl"
# Bearer and DPoP tokens are both accepted here: the error goes on the Bearer challenge, and the
# DPoP one (RFC 9449 §7.1) follows it with the proof algorithms.
ALGS='algs="ES256 ES384 EdDSA Ed25519 RS256 PS256"'
MISMATCH="Bearer error=\"invalid_token\", error_description=\"audience mismatch\", resource_metadata=\"$HYPER/.well-known/oauth-protected-resource\""$'\n'"DPoP $ALGS, resource_metadata=\"$HYPER/.well-known/oauth-protected-resource\""

status=$(curl -s --max-time 5 -o "$tmp/body" -w '%{http_code}' "$HYPER/.well-known/oauth-protected-resource")
if [ "$status" = 200 ] && [ "$(json_field resource)" = "$BASE/guard-hyper" ]; then
  pass "hyper: metadata names the resource"
else flunk "hyper: metadata ($status): $(head -c 300 "$tmp/body")"; fi

status=$(call "$ECHO_TOKEN" POST "$HYPER/tools/echo" '{"say":"hello"}')
if [ "$status" = 200 ] && [ "$(cat "$tmp/body")" = '{"say":"hello"}' ]; then
  pass "hyper: the echo token calls echo"
else flunk "hyper: the echo token calling echo ($status): $(head -c 300 "$tmp/body")"; fi

status=$(call "$WHOAMI_TOKEN" POST "$HYPER/tools/echo" '{"say":"hello"}')
if [ "$status" = 401 ] && [ "$(challenge)" = "$MISMATCH" ]; then
  pass "hyper: the whoami token calling echo is refused 401 audience mismatch"
else flunk "hyper: the whoami token calling echo ($status, challenge '$(challenge)')"; fi

status=$(call "$WHOAMI_TOKEN" GET "$HYPER/tools/whoami")
if [ "$status" = 200 ] && [ "$(cat "$tmp/body")" = "$SUB" ]; then
  pass "hyper: whoami sees the verified subject"
else flunk "hyper: whoami ($status): $(head -c 300 "$tmp/body")"; fi

# ------------------------------------------------------------------------------------------
echo "== rmcp_tool (GuardLayer::mcp), with the official MCP Python SDK"
RMCP_MISMATCH="401 audience Bearer error=\"invalid_token\", error_description=\"audience mismatch\", resource_metadata=\"$RMCP/.well-known/oauth-protected-resource\", DPoP $ALGS, resource_metadata=\"$RMCP/.well-known/oauth-protected-resource\""
# Sets $rc (the client's exit status) and $out (its one line).
mcp() { rc=0; out=$(timeout 60 "$PY" scripts/e2e/mcp_client.py "$RMCP/mcp" "$1" "$2") || rc=$?; }

mcp "$SEARCH_TOKEN" code_search
if [ "$rc" = 0 ] && [[ "$out" == "OK 3 matches for \"audience\" (for $SUB)" ]]; then
  pass "rmcp: the code_search token calls code_search: $out"
else flunk "rmcp: the code_search token calling code_search (exit $rc): $out"; fi

mcp "$SQL_TOKEN" code_search
if [ "$rc" = 4 ] && [ "$out" = "REFUSED $RMCP_MISMATCH at call" ]; then
  pass "rmcp: the sql_admin token calling code_search is refused 401 audience mismatch"
else flunk "rmcp: the sql_admin token calling code_search (exit $rc): $out"; fi

mcp "$SQL_TOKEN" sql_admin
if [ "$rc" = 0 ] && [[ "$out" == "OK would execute"* ]]; then
  pass "rmcp: the sql_admin token calls sql_admin"
else flunk "rmcp: the sql_admin token calling sql_admin (exit $rc): $out"; fi

# Two readers could see two different calls: refused before anything else reads it.
status=$(call "$SEARCH_TOKEN" POST "$RMCP/mcp" '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sql_admin","name":"code_search","arguments":{}}}')
if [ "$status" = 400 ] && [ "$(json_field error)" = invalid_request ]; then
  pass "rmcp: a message with a duplicate member name is refused 400"
else flunk "rmcp: duplicate member names ($status): $(head -c 300 "$tmp/body")"; fi

# ------------------------------------------------------------------------------------------
echo "== revoking the subject in toolgate"
curl -sf --max-time 5 -X POST "$TG/v1/signals/revocations" -H 'Content-Type: application/json' \
  -d "{\"kind\":\"subject\",\"value\":\"$SUB\"}" >/dev/null

# The guards poll the revocation digest every 250 ms: retry for at most 5 s, never a fixed sleep.
revoked=""
for _ in $(seq 1 50); do
  status=$(call "$ECHO_TOKEN" POST "$HYPER/tools/echo" '{"say":"hello"}')
  if [ "$status" != 200 ]; then revoked=$status; break; fi
  sleep 0.1
done
if [ "$revoked" = 401 ] && [ "$(json_field check)" = revocation ]; then
  pass "hyper: after the revocation the echo token is refused (401, check revocation)"
else flunk "hyper: after the revocation (status ${revoked:-200 for 5 s}): $(head -c 300 "$tmp/body")"; fi

rc=""
for _ in $(seq 1 10); do
  mcp "$SEARCH_TOKEN" code_search
  [ "$rc" != 0 ] && break
  sleep 0.2
done
if [ "$rc" = 3 ] && [[ "$out" == "REFUSED 401 revocation "* ]]; then
  pass "rmcp: after the revocation the code_search token is refused at initialize: ${out%% Bearer*}"
else flunk "rmcp: after the revocation (exit $rc): $out"; fi

ended=$(date +%s)
echo "== build $((built - began)) s, checks $((ended - built)) s"
if [ "$fail" != 0 ]; then
  for log in toolgate hyper rmcp; do echo "--- $log log"; tail -n 20 "$tmp/$log.log"; done
  exit 1
fi
echo "e2e-guard: all expectations met"
