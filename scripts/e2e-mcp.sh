#!/usr/bin/env bash
# End to end with software nobody here wrote: the official MCP Python SDK's server and client,
# with toolgate and `toolgate gateway` between them.
#   1. a token exchanged for code_search calls code_search;
#   2. the same token calling sql_admin is refused (401/403);
#   3. a token for another MCP server entirely is refused at initialize;
#   4. run_job, registered with requires_execution, is called with a token minted for the exact
#      tools/call body (an httpx.Auth in the SDK's transport); the same call with its body
#      changed after the token was minted is refused with check "execution";
#   5. after a revocation signal, the next code_search call is refused;
#   6. over TLS (certificates from `toolgate dev-certs`): code_search registered with
#      sender_constraint "mtls" on a TLS toolgate; an httpx client presenting the dev X.509-SVID
#      exchanges it as its credential (urn:starfly:token-type:mtls) for a token bound to the
#      certificate, and calls code_search through a TLS gateway (which syncs from toolgate over
#      https with --toolgate-ca): allowed with the certificate, refused without it.
# Exits non-zero if any expectation fails. Loopback only; every process is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${TOOLGATE_E2E_VENV:-$ROOT/target/e2e-venv}"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import mcp' 2>/dev/null; then
  echo "== creating $VENV with the MCP Python SDK"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'mcp>=2,<3'
fi
PY="$VENV/bin/python"
"$PY" -c 'import importlib.metadata as m; print("mcp SDK", m.version("mcp"))'

cargo build --release --bin toolgate
TG_BIN="$ROOT/target/release/toolgate"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "FAIL: $1 never answered" >&2; exit 1; }

TG_PORT=$(free_port); MCP_PORT=$(free_port); GW_PORT=$(free_port)
TG="http://127.0.0.1:$TG_PORT"
"$TG_BIN" serve --dev --listen "127.0.0.1:$TG_PORT" --db "$tmp/toolgate.db" 2>"$tmp/toolgate.log" & pids+=($!)
"$PY" scripts/e2e/mcp_server.py "$MCP_PORT" >"$tmp/mcp.log" 2>&1 & pids+=($!)
wait_http "$TG/v1/sys/health"
wait_http "http://127.0.0.1:$MCP_PORT/mcp"

SERVER=https://mcp.example.com/servers/e2e
reg() { curl -sf -X POST "$TG/v1/tools" -H 'Content-Type: application/json' -d "$1" >/dev/null; }
reg "{\"tool_id\":\"code_search\",\"resource_uri\":\"$SERVER/tools/code_search\",\"server_id\":\"e2e-mcp\"}"
reg "{\"tool_id\":\"sql_admin\",\"resource_uri\":\"$SERVER/tools/sql_admin\",\"server_id\":\"e2e-mcp\"}"
reg '{"tool_id":"billing","resource_uri":"https://billing.example.com/mcp","server_id":"billing-mcp"}'
reg "{\"tool_id\":\"run_job\",\"resource_uri\":\"$SERVER/tools/run_job\",\"server_id\":\"e2e-mcp\",\"requires_execution\":true,\"allowed_operations\":[\"tools/call\"]}"

"$TG_BIN" gateway --toolgate "$TG" --listen "127.0.0.1:$GW_PORT" --upstream "http://127.0.0.1:$MCP_PORT" \
  --server-id e2e-mcp --resource "$SERVER" --public-url "http://127.0.0.1:$GW_PORT" 2>"$tmp/gateway.log" & pids+=($!)
wait_http "http://127.0.0.1:$GW_PORT/.well-known/oauth-protected-resource"
GW="http://127.0.0.1:$GW_PORT/mcp"

stub() { printf '%s.%s.stub' "$(printf '{"alg":"none"}' | base64 | tr -d '=\n' | tr '/+' '_-')" "$(printf '{"sub":"%s"}' "$1" | base64 | tr -d '=\n' | tr '/+' '_-')"; }
token() { "$TG_BIN" token exchange --url "$TG" --audience "$2" --subject-token "$(stub "$1")"; }

fail=0
expect() { # NAME WANT_EXIT CMD...
  local name=$1 want=$2; shift 2
  local out rc=0
  out=$("$@") || rc=$?
  # A refusal must be one the client saw as HTTP 401 or 403.
  if [ "$rc" = "$want" ] && { [ "$want" = 0 ] || [[ "$out" == "REFUSED 40"[13]* ]]; }; then
    echo "PASS $name: $out"
  else
    echo "FAIL $name (exit $rc, wanted $want): $out"; fail=1
  fi
}

CODE_TOKEN=$(token agent-e2e "$SERVER/tools/code_search")
expect "code_search token calls code_search" 0 "$PY" scripts/e2e/mcp_client.py "$GW" "$CODE_TOKEN" code_search
expect "same token calling sql_admin is refused" 4 "$PY" scripts/e2e/mcp_client.py "$GW" "$CODE_TOKEN" sql_admin
OTHER=$(token agent-e2e https://billing.example.com/mcp)
expect "token for another MCP server refused at initialize" 3 "$PY" scripts/e2e/mcp_client.py "$GW" "$OTHER" code_search

expect_exec() { # NAME WANT CMD... (WANT: OK, or the refusal "REFUSED 403 execution")
  local name=$1 want=$2; shift 2
  local out rc=0
  out=$("$@") || rc=$?
  if [[ "$out" == "$want"* ]]; then echo "PASS $name: $out"; else echo "FAIL $name (exit $rc): $out"; fail=1; fi
}
expect_exec "run_job with a token bound to its exact tools/call body" "OK ran job" \
  "$PY" scripts/e2e/mcp_exec_client.py "$GW" "$TG" "$(stub agent-e2e)" "$SERVER/tools/run_job"
expect_exec "run_job with the body changed after its token was minted is refused" \
  'REFUSED 403 execution Bearer error="insufficient_scope", error_description="request body hash does not match the token"' \
  "$PY" scripts/e2e/mcp_exec_client.py "$GW" "$TG" "$(stub agent-e2e)" "$SERVER/tools/run_job" tamper

SUB=$(printf '%s' "$CODE_TOKEN" | cut -d. -f2 | tr '_-' '/+' | python3 -c 'import base64,json,sys; s=sys.stdin.read().strip(); print(json.loads(base64.b64decode(s+"="*(-len(s)%4)))["sub"])')
curl -sf -X POST "$TG/v1/signals/events" -H 'Content-Type: application/json' -d "{\"iss\":\"https://siem.example.com\",\"jti\":\"e2e-$$\",\"iat\":$(date +%s),\"sub_id\":{\"format\":\"uri\",\"uri\":\"$SUB\"},\"events\":{\"https://schemas.openid.net/secevent/caep/event-type/session-revoked\":{}}}" >/dev/null
sleep 1  # the gateway polls toolgate's revocation digest four times a second
expect "after the revocation signal the next code_search call is refused" 3 "$PY" scripts/e2e/mcp_client.py "$GW" "$CODE_TOKEN" code_search

echo "== 6. TLS: a certificate-bound token through a TLS gateway"
"$TG_BIN" dev-certs "$tmp/certs" >/dev/null
cat >"$tmp/tls.json" <<JSON
{"trusted_client_cas": [{"ca_file": "$tmp/certs/ca.pem", "trust_domain": "dev.local"}]}
JSON
TGS_PORT=$(free_port); GWS_PORT=$(free_port)
TGS="https://localhost:$TGS_PORT"
"$TG_BIN" serve --dev --listen "127.0.0.1:$TGS_PORT" --db "$tmp/tls.db" --config "$tmp/tls.json" \
  --tls-cert "$tmp/certs/server.pem" --tls-key "$tmp/certs/server.key" --client-ca "$tmp/certs/ca.pem" \
  2>"$tmp/toolgate-tls.log" & pids+=($!)
wait_https() { for _ in $(seq 1 100); do curl -s -o /dev/null --cacert "$tmp/certs/ca.pem" "$1" && return 0; sleep 0.1; done; echo "FAIL: $1 never answered" >&2; exit 1; }
wait_https "$TGS/v1/sys/health"
curl -sf --cacert "$tmp/certs/ca.pem" -X POST "$TGS/v1/tools" -H 'Content-Type: application/json' \
  -d "{\"tool_id\":\"code_search\",\"resource_uri\":\"$SERVER/tools/code_search\",\"server_id\":\"e2e-mcp\",\"sender_constraint\":\"mtls\"}" >/dev/null
"$TG_BIN" gateway --toolgate "$TGS" --toolgate-ca "$tmp/certs/ca.pem" --listen "127.0.0.1:$GWS_PORT" \
  --upstream "http://127.0.0.1:$MCP_PORT" --server-id e2e-mcp --resource "$SERVER" \
  --public-url "https://localhost:$GWS_PORT" --tls-cert "$tmp/certs/server.pem" --tls-key "$tmp/certs/server.key" \
  --client-ca "$tmp/certs/ca.pem" 2>"$tmp/gateway-tls.log" & pids+=($!)
wait_https "https://localhost:$GWS_PORT/.well-known/oauth-protected-resource"
GWS="https://localhost:$GWS_PORT/mcp"
mtls() { "$PY" scripts/e2e/mcp_mtls_client.py "$GWS" "$TGS" "$tmp/certs/ca.pem" "$tmp/certs/client.pem" "$tmp/certs/client.key" "$SERVER/tools/code_search" code_search "$1"; }
expect "the SVID's certificate-bound token calls code_search through the TLS gateway" 0 mtls bound
expect "the same token without the client certificate is refused" 3 mtls bearer

echo "== gateway decisions reported to toolgate (audit, newest first)"
sleep 0.5
curl -s "$TG/v1/audit?kind=gateway&limit=8" | python3 -c 'import json,sys; [print(" ", e["decision"], e["check"] or "-", e["target"], e["subject"]) for e in json.load(sys.stdin)["events"]]'
if [ "$fail" != 0 ]; then
  echo "--- gateway log"; tail -n 20 "$tmp/gateway.log"; echo "--- mcp server log"; tail -n 20 "$tmp/mcp.log"
  for f in toolgate-tls gateway-tls; do [ -f "$tmp/$f.log" ] && { echo "--- $f log"; tail -n 20 "$tmp/$f.log"; }; done
  exit 1
fi
echo "e2e-mcp: all expectations met"
