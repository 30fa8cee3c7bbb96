#!/usr/bin/env bash
# The confused deputy of "The gateway as a resource server for your authorization server" (issue
# #15), end to end: one authorization server, two MCP servers, a token for one replayed at the
# other.
#   - the authorization server: panva's oidc-provider (scripts/idp/provider.mjs) on loopback
#     HTTPS with the certificates of `toolgate dev-certs`; its client_credentials client gets an
#     RFC 9068 JWT access token whose `aud` is the `resource` it asked for (RFC 8707);
#   - two MCP servers made with the official MCP Python SDK (scripts/e2e/mcp_server.py PORT
#     issues|billing), "issues" (tool list_issues) and "billing" (tool get_invoice), each behind
#     its own `toolgate gateway` whose --resource is its public MCP URL;
#   - one production-mode toolgate daemon with the provider under `authorization_servers`
#     (discovery, ca_file), and no `trusted_issuers`.
# A token for issues calls list_issues at the issues gateway (the SDK client: tool result); the
# same token replayed at the billing gateway is refused: HTTP 401 with `WWW-Authenticate: Bearer
# error="invalid_token", error_description="audience mismatch", resource_metadata="…"` (curl
# checks the header, the SDK client fails at initialize); the denial is in toolgate's audit (GET
# /v1/audit?decision=deny&kind=gateway) and in the dashboard's numbers (GET /v1/stats
# denials_by_check, what the MCP Security tab shows). The same token is no subject token at
# toolgate's exchange (401 invalid_client): an authorization server of the gateways is not a
# trusted issuer.
# Prints statuses, headers and claims (never a token, a signature or a secret); exits non-zero
# on any unexpected result. Loopback only; every process is stopped on exit.
#   TOOLGATE_BIN=path   a toolgate binary to use instead of building target/release/toolgate
#   TOOLGATE_E2E_VENV   the Python venv (default target/e2e-venv, shared with e2e-mcp.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${TOOLGATE_E2E_VENV:-$ROOT/target/e2e-venv}"

for tool in node npm curl python3; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is required" >&2; exit 1; }
done
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import mcp' 2>/dev/null; then
  echo "== $VENV: the MCP Python SDK"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'mcp>=2,<3'
fi
PY="$VENV/bin/python"
"$PY" -c 'import importlib.metadata as m; print("mcp SDK", m.version("mcp"))'
echo "== panva's oidc-provider (npm ci --prefix scripts/idp)"
npm ci --prefix scripts/idp --no-audit --no-fund --loglevel=error
if [ -z "${TOOLGATE_BIN:-}" ]; then
  cargo build --release --bin toolgate
  TOOLGATE_BIN="$ROOT/target/release/toolgate"
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" != 0 ]; then   # the servers' own words (no tokens in them)
    for f in idp toolgate gateway-issues gateway-billing mcp-issues mcp-billing; do
      [ -f "$tmp/$f.log" ] && { echo "--- $f.log" >&2; tail -n 15 "$tmp/$f.log" >&2; }
    done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_up NAME PID URL [CURL_ARGS...]: poll until URL answers, at most 10 s; stop early if PID died.
wait_up() {
  local name=$1 pid=$2 url=$3; shift 3
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "$@" "$url" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  fail "$name did not come up at $url"
}
# The claims (or, with 0, the header) of a JWT on stdin, compact: never the token, never its signature.
jwt_json() { python3 -c 'import base64,json,sys; s=sys.stdin.read().strip().split(".")[int(sys.argv[1])]; print(json.dumps(json.loads(base64.urlsafe_b64decode(s+"="*(-len(s)%4))),sort_keys=True,separators=(",",":")))' "${1:-1}"; }
# A Python expression over the JSON document `v` on stdin, printed as compact JSON (or as is, for a string).
json_pick() { python3 -c 'import json,sys; v=json.load(sys.stdin); r=eval(sys.argv[1]); print(r if isinstance(r,str) else json.dumps(r,sort_keys=True,separators=(",",":")))' "$1"; }

"$TOOLGATE_BIN" dev-certs "$tmp/certs" >/dev/null
CA="$tmp/certs/ca.pem"
IDP_PORT=$(free_port); TG_PORT=$(free_port)
ISSUES_MCP=$(free_port); BILLING_MCP=$(free_port); ISSUES_GW=$(free_port); BILLING_GW=$(free_port)
IDP="https://127.0.0.1:$IDP_PORT"
TG="https://127.0.0.1:$TG_PORT"
# Each MCP server's public URL (its gateway's MCP endpoint) is its resource indicator.
ISSUES="http://127.0.0.1:$ISSUES_GW/mcp"
BILLING="http://127.0.0.1:$BILLING_GW/mcp"

echo "== 1. the authorization server at $IDP (client_credentials; resources: issues, billing)"
IDP_PORT=$IDP_PORT IDP_CERTS="$tmp/certs" IDP_STATE="$tmp/idp-state" IDP_RESOURCES="$ISSUES $BILLING" IDP_SCOPE="mcp:tools" \
  node scripts/idp/provider.mjs >"$tmp/idp.log" 2>&1 & pids+=($!)
wait_up idp $! "$IDP/.well-known/openid-configuration" --cacert "$CA"
echo "discovery: $(curl -sS --cacert "$CA" "$IDP/.well-known/openid-configuration" | json_pick '{k: v[k] for k in ("issuer", "token_endpoint")}')"
# The client's secret stays in files: a Basic header for curl, made from the provider's 0600 file.
(umask 077; python3 -c 'import base64,json,sys,urllib.parse as u; c=json.load(open(sys.argv[1])); print("Authorization: Basic "+base64.b64encode((u.quote_plus(c["client_id"])+":"+u.quote_plus(c["client_secret"])).encode()).decode())' \
  "$tmp/idp-state/client.json" >"$tmp/client.header")

echo "== 2. toolgate at $TG, production mode, the provider under authorization_servers (not trusted_issuers)"
printf '{"issuer":"%s",\n "authorization_servers":[{"issuer":"%s","discovery":true,"ca_file":"%s"}]}\n' "$TG" "$IDP" "$CA" >"$tmp/toolgate.json"
sed "s|$tmp|\$tmp|g; s/^/  /" "$tmp/toolgate.json"
(umask 077
 head -c 32 /dev/urandom | base64 >"$tmp/admin-token"
 head -c 32 /dev/urandom | base64 >"$tmp/reporter-token"
 printf 'Authorization: Bearer %s\n' "$(cat "$tmp/admin-token")" >"$tmp/admin.header")
"$TOOLGATE_BIN" serve --listen "127.0.0.1:$TG_PORT" --db "$tmp/toolgate.db" --config "$tmp/toolgate.json" \
  --admin-token-file "$tmp/admin-token" --reporter-token-file "$tmp/reporter-token" \
  --tls-cert "$tmp/certs/server.pem" --tls-key "$tmp/certs/server.key" >"$tmp/toolgate.log" 2>&1 & pids+=($!)
wait_up toolgate $! "$TG/v1/sys/health" --cacert "$CA"
admin() { curl -sS --cacert "$CA" -H @"$tmp/admin.header" "$@"; }
for _ in $(seq 1 100); do   # discovery and the first key fetch happen in the background
  state=$(admin "$TG/v1/authorization-servers" | json_pick 'v["authorization_servers"][0].get("state", "")')
  [ "$state" = fresh ] && break
  sleep 0.1
done
[ "$state" = fresh ] || fail "toolgate's keys for the provider are '$state', not fresh"
echo "authorization server: $(admin "$TG/v1/authorization-servers" | json_pick '[{k: a.get(k) for k in ("issuer", "state")} for a in v["authorization_servers"]]')"
register() { # TOOL_ID SERVER_ID RESOURCE_URI
  local status
  status=$(admin -o "$tmp/reg.json" -w '%{http_code}' -X POST "$TG/v1/mcp/tools" -H 'Content-Type: application/json' \
    -d "{\"tool_id\":\"$1\",\"server_id\":\"$2\",\"resource_uri\":\"$3\",\"required_capabilities\":[\"mcp:tools\"]}")
  [ "$status" = 201 ] || fail "registering $1 answered $status: $(cat "$tmp/reg.json")"
}
register list_issues issues "$ISSUES/tools/list_issues"
register get_invoice billing "$BILLING/tools/get_invoice"
echo "registered list_issues (server issues) and get_invoice (server billing), each requiring the scope mcp:tools"

echo "== 3. two MCP servers (the official Python SDK), each behind its own toolgate gateway"
for name in issues billing; do
  if [ $name = issues ]; then mcp=$ISSUES_MCP gw=$ISSUES_GW res=$ISSUES; else mcp=$BILLING_MCP gw=$BILLING_GW res=$BILLING; fi
  "$PY" scripts/e2e/mcp_server.py "$mcp" $name >"$tmp/mcp-$name.log" 2>&1 & pids+=($!)
  wait_up "mcp-$name" $! "http://127.0.0.1:$mcp/mcp"
  "$TOOLGATE_BIN" gateway --toolgate "$TG" --toolgate-ca "$CA" --admin-token-file "$tmp/reporter-token" \
    --listen "127.0.0.1:$gw" --upstream "http://127.0.0.1:$mcp" --server-id $name --resource "$res" \
    --public-url "http://127.0.0.1:$gw" 2>"$tmp/gateway-$name.log" & pids+=($!)
  gw_pid=$!
  # Ready once its protected-resource metadata names the provider: the gateway has synced it.
  for _ in $(seq 1 100); do
    curl -s "http://127.0.0.1:$gw/.well-known/oauth-protected-resource" 2>/dev/null | grep -qF "\"$IDP\"" && break
    kill -0 $gw_pid 2>/dev/null || fail "the $name gateway exited"
    sleep 0.1
  done
  meta=$(curl -sS "http://127.0.0.1:$gw/.well-known/oauth-protected-resource")
  printf '%s' "$meta" | grep -qF "\"$IDP\"" || fail "the $name gateway's metadata does not name the provider: $meta"
  echo "$name gateway: $(printf '%s' "$meta" | json_pick '{k: v[k] for k in ("resource", "authorization_servers")}')"
done

echo "== 4. a client_credentials token from the provider, resource = issues"
# A plain token request with curl. The installed SDK (mcp 2.3.0 when this was written) does have
# the client_credentials grant, with `resource` (RFC 8707): ClientCredentialsOAuthProvider in
# mcp.client.auth.extensions.client_credentials, an httpx.Auth for its transport. It discovers the
# authorization server from the gateway's 401 and takes authorization_servers[0] of the metadata,
# which is toolgate's own issuer here (the provider comes second), and it asks for the token
# itself, for the server it is talking to; this scenario needs the one token in hand, to replay it.
out=$(curl -sS --cacert "$CA" -H @"$tmp/client.header" "$IDP/token" -d grant_type=client_credentials \
  --data-urlencode "resource=$ISSUES" -d scope=mcp:tools -w '\n%{http_code}')
status="${out##*$'\n'}"; body="${out%$'\n'*}"
[ "$status" = 200 ] || fail "the provider's token endpoint answered $status: $body"
AT=$(printf '%s' "$body" | json_pick 'v["access_token"]')
echo "token endpoint: HTTP 200, token_type $(printf '%s' "$body" | json_pick 'v["token_type"]')"
echo "  header $(printf '%s' "$AT" | jwt_json 0)"
claims=$(printf '%s' "$AT" | jwt_json 1)
echo "  claims $(printf '%s' "$claims" | json_pick '{k: x for k, x in v.items() if k not in ("jti", "iat", "exp")}')"
[ "$(printf '%s' "$claims" | json_pick 'v["aud"]')" = "$ISSUES" ] || fail "the token's aud is not $ISSUES"
# curl reads the token from 0600 files, not from its command line (the SDK client takes it as an argument).
(umask 077; printf 'Authorization: Bearer %s\n' "$AT" >"$tmp/at.header"
 printf '{"grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","subject_token":"%s","subject_token_type":"urn:ietf:params:oauth:token-type:access_token","audience":"%s"}' \
   "$AT" "$ISSUES/tools/list_issues" >"$tmp/exchange-request.json")

echo "== 5. the SDK client calls list_issues at the issues gateway with it (expect the tool result)"
res=$("$PY" scripts/e2e/mcp_client.py "$ISSUES" "$AT" list_issues '{"repo":"toolgate"}') || fail "issues: $res"
echo "issues gateway, tools/call list_issues: $res"
[ "$res" = "OK 2 open issues in toolgate" ] || fail "unexpected result: $res"
status=$(curl -sS -o /dev/null -w '%{http_code}' "$ISSUES" -H @"$tmp/at.header" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' \
  -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}')
echo "issues gateway, initialize with curl: HTTP $status"
[ "$status" = 200 ] || fail "initialize at the issues gateway answered $status"

echo "== 6. the same token replayed at the billing gateway (expect 401 audience mismatch)"
curl -sS -o "$tmp/deny.json" -D "$tmp/deny.headers" "$BILLING" -H @"$tmp/at.header" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' \
  -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_invoice","arguments":{"invoice":"2024-001"}}}'
status=$(head -n 1 "$tmp/deny.headers" | tr -d '\r')
challenge=$(grep -i '^www-authenticate: Bearer ' "$tmp/deny.headers" | tr -d '\r')
echo "billing gateway, tools/call get_invoice with curl: $status"
grep -i '^www-authenticate:' "$tmp/deny.headers" | tr -d '\r' | sed 's/^/  /'   # Bearer, and DPoP beside it
echo "  body $(cat "$tmp/deny.json")"
[[ "$status" == "HTTP/1.1 401"* ]] || fail "expected 401"
want="WWW-Authenticate: Bearer error=\"invalid_token\", error_description=\"audience mismatch\", resource_metadata=\"http://127.0.0.1:$BILLING_GW/.well-known/oauth-protected-resource"
[[ "${challenge,,}" == "${want,,}"* ]] || fail "expected the challenge: $want…"
rc=0; res=$("$PY" scripts/e2e/mcp_client.py "$BILLING" "$AT" get_invoice '{"invoice":"2024-001"}') || rc=$?
echo "billing gateway, the SDK client: exit $rc, $res"
[ "$rc" = 3 ] && [[ "$res" == 'REFUSED 401 '*'error="invalid_token", error_description="audience mismatch"'*' at initialize' ]] \
  || fail "the SDK client was not refused at initialize with 401 audience mismatch"

echo "== 7. the denial in toolgate's audit (GET /v1/audit?decision=deny&kind=gateway) and stats"
# Gateways report their decisions in batches: poll until both denials are in.
for _ in $(seq 1 100); do
  rows=$(admin "$TG/v1/audit?decision=deny&kind=gateway&check=audience" | json_pick 'v["count"]')
  [ "$rows" -ge 2 ] && break
  sleep 0.1
done
audit=$(admin "$TG/v1/audit?decision=deny&kind=gateway")
printf '%s' "$audit" | json_pick '"\n".join("  %s %s check=%s target=%s subject=%s: %s" % (e["time"], e["decision"], e["check"], e["target"], e["subject"] or "-", e["reason"]) for e in v["events"])'
[ "$(printf '%s' "$audit" | json_pick 'v["count"]')" = 2 ] && [ "$rows" = 2 ] \
  || fail "expected exactly the two audience denials in the audit, got $rows of $(printf '%s' "$audit" | json_pick 'v["count"]')"
printf '%s' "$audit" | json_pick 'sorted(e["target"] for e in v["events"]) == sorted(["'"$BILLING"'", "get_invoice"]) and all(e["reason"] == "gateway billing: audience mismatch" for e in v["events"])' | grep -qx true \
  || fail "the audit rows are not the billing gateway's two audience mismatches (the SDK's initialize, curl's get_invoice)"
allows=$(admin "$TG/v1/audit?decision=allow&kind=gateway" | json_pick 'v["count"]')
echo "  (and $allows gateway allows: the issues calls)"
stats=$(admin "$TG/v1/stats")
echo "stats: $(printf '%s' "$stats" | json_pick '{"verifications": {k: v["verifications"][k] for k in ("total", "allowed", "denied")}, "denials_by_check (non-zero)": {k: n for k, n in v["denials_by_check"].items() if n}}')"
[ "$(printf '%s' "$stats" | json_pick 'v["denials_by_check"].get("audience", 0)')" = 2 ] \
  && [ "$(printf '%s' "$stats" | json_pick 'v["verifications"]["denied"]')" = 2 ] \
  || fail "the dashboard's numbers do not show the two audience denials"

echo "== 8. the issues token at toolgate's exchange (expect 401 invalid_client: the provider is no trusted issuer)"
status=$(curl -sS --cacert "$CA" -o "$tmp/exchange.json" -w '%{http_code}' "$TG/v1/exchange/token" -H 'Content-Type: application/json' \
  -d @"$tmp/exchange-request.json")
echo "exchange: HTTP $status $(cat "$tmp/exchange.json")"
[ "$status" = 401 ] && [ "$(json_pick 'v["error"]' <"$tmp/exchange.json")" = invalid_client ] || fail "expected 401 invalid_client"

echo "e2e-two-servers: the token for issues worked at issues only; the replay at billing was refused (401 audience mismatch), audited and counted"
