#!/usr/bin/env bash
# DPoP (RFC 9449) end to end with clients nobody here wrote, through toolgate and `toolgate
# gateway` in front of the official MCP Python SDK's server (scripts/e2e/mcp_server.py), with
# code_search registered with sender_constraint "dpop" (bearer tokens refused):
#   1. panva's `dpop` npm package (pinned in scripts/e2e/package.json) makes the keys and proofs
#      of scripts/e2e-dpop.mjs: a DPoP-bound token from the token endpoint (token_type DPoP,
#      cnf.jkt the key's thumbprint), tools/call through the gateway with `Authorization: DPoP`
#      and a proof carrying ath (200); the proof replayed, the token as Bearer, a proof from
#      another key: each 401 with a `WWW-Authenticate: DPoP` challenge;
#   2. the official MCP Python SDK client with an httpx.Auth adding a fresh proof per request
#      (scripts/e2e/mcp_dpop_client.py, proofs signed with the `cryptography` package): allowed;
#      the same token as Bearer, or with another key's proofs: refused;
# each against toolgate and a gateway run with --dpop-nonce (the clients answer use_dpop_nonce
# at the token endpoint and at the gateway), then without nonces (--dpop-window 2: proofs must
# be made after the start plus the window, so the script waits that long once).
# Exits non-zero if any expectation fails. Loopback only; every process is stopped on exit.
#   TOOLGATE_BIN=path   a toolgate binary to use instead of building target/release/toolgate
#   TOOLGATE_E2E_VENV   the Python venv (default target/e2e-venv, shared with e2e-mcp.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${TOOLGATE_E2E_VENV:-$ROOT/target/e2e-venv}"

for tool in node npm curl python3; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is required" >&2; exit 1; }
done
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import mcp, cryptography' 2>/dev/null; then
  echo "== $VENV: the MCP Python SDK and cryptography"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'mcp>=2,<3' 'cryptography>=42'
fi
PY="$VENV/bin/python"
"$PY" -c 'import importlib.metadata as m; print("mcp SDK", m.version("mcp"), "/ cryptography", m.version("cryptography"))'
echo "== panva's dpop (npm ci --prefix scripts/e2e)"
npm ci --prefix scripts/e2e --no-audit --no-fund --loglevel=error

if [ -z "${TOOLGATE_BIN:-}" ]; then
  cargo build --release --bin toolgate
  TOOLGATE_BIN="$ROOT/target/release/toolgate"
fi
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "FAIL: $1 never answered" >&2; exit 1; }

MCP_PORT=$(free_port)
"$PY" scripts/e2e/mcp_server.py "$MCP_PORT" >"$tmp/mcp.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$MCP_PORT/mcp"

SERVER=https://mcp.example.com/servers/e2e
AUDIENCE="$SERVER/tools/code_search"
STUB="$(printf '{"alg":"none"}' | base64 | tr -d '=\n' | tr '/+' '_-').$(printf '{"sub":"agent-e2e"}' | base64 | tr -d '=\n' | tr '/+' '_-').stub"

# start NAME FLAGS...: a dev toolgate and a gateway in front of the MCP server, both with FLAGS;
# sets TG and GW.
start() {
  local name=$1; shift
  local tg_port gw_port
  tg_port=$(free_port); gw_port=$(free_port)
  TG="http://127.0.0.1:$tg_port"
  "$TOOLGATE_BIN" serve --dev --listen "127.0.0.1:$tg_port" --db "$tmp/$name.db" "$@" 2>"$tmp/toolgate-$name.log" & pids+=($!)
  wait_http "$TG/v1/sys/health"
  curl -sf -X POST "$TG/v1/tools" -H 'Content-Type: application/json' \
    -d "{\"tool_id\":\"code_search\",\"resource_uri\":\"$AUDIENCE\",\"server_id\":\"e2e-mcp\",\"sender_constraint\":\"dpop\"}" >/dev/null
  "$TOOLGATE_BIN" gateway --toolgate "$TG" --listen "127.0.0.1:$gw_port" --upstream "http://127.0.0.1:$MCP_PORT" \
    --server-id e2e-mcp --resource "$SERVER" --public-url "http://127.0.0.1:$gw_port" "$@" \
    2>"$tmp/gateway-$name.log" & pids+=($!)
  wait_http "http://127.0.0.1:$gw_port/.well-known/oauth-protected-resource"
  GW="http://127.0.0.1:$gw_port/mcp"
}

fail=0
js() { # MODE: scripts/e2e-dpop.mjs prints its own PASS/FAIL lines
  node scripts/e2e-dpop.mjs "$TG" "$GW" "$STUB" "$AUDIENCE" code_search "$1" || fail=1
}
expect() { # NAME PATTERN WANT_EXIT CMD...: the output must match the glob PATTERN
  local name=$1 pattern=$2 want=$3; shift 3
  local out rc=0
  out=$("$@") || rc=$?
  if [ "$rc" = "$want" ] && [[ "$out" == $pattern ]]; then
    echo "PASS $name: ${out//$'\n'/ | }"
  else
    echo "FAIL $name (exit $rc, wanted $want): ${out//$'\n'/ | }"; fail=1
  fi
}
py() { "$PY" scripts/e2e/mcp_dpop_client.py "$GW" "$TG" "$STUB" "$AUDIENCE" code_search "$1"; }
python_client() {
  expect "MCP Python SDK, DPoP proof per request: tools/call code_search" '*OK 3 matches*' 0 py dpop
  expect "MCP Python SDK, the DPoP-bound token as Bearer: refused" \
    '*REFUSED 401*DPoP error="invalid_token"*' 3 py bearer
  expect "MCP Python SDK, proofs from another key: refused" \
    '*REFUSED 401*DPoP error="invalid_dpop_proof"*' 3 py otherkey
}

echo "== 1. toolgate and the gateway with --dpop-nonce"
start nonce --dpop-nonce
echo "-- panva's dpop (scripts/e2e-dpop.mjs)"
js nonce
echo "-- the official MCP Python SDK (scripts/e2e/mcp_dpop_client.py)"
python_client
TG_NONCE=$TG

echo "== 2. without nonces, --dpop-window 2 (proofs dated after the start plus the window)"
start window --dpop-window 2
sleep 3
echo "-- panva's dpop (scripts/e2e-dpop.mjs)"
js no-nonce
echo "-- the official MCP Python SDK (scripts/e2e/mcp_dpop_client.py)"
expect "MCP Python SDK, DPoP proof per request: tools/call code_search" '*OK 3 matches*' 0 py dpop

echo "== 1.'s gateway decisions reported to toolgate (audit, newest first)"
sleep 0.5
curl -s "$TG_NONCE/v1/audit?kind=gateway&limit=8" | python3 -c 'import json,sys; [print(" ", e["decision"], e["check"] or "-", e["target"], e["reason"]) for e in json.load(sys.stdin)["events"]]'
if [ "$fail" != 0 ]; then
  for f in "$tmp"/gateway-*.log "$tmp"/toolgate-*.log "$tmp/mcp.log"; do echo "--- $(basename "$f")"; tail -n 20 "$f"; done
  exit 1
fi
echo "e2e-dpop: all expectations met"
