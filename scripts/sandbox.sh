#!/usr/bin/env bash
# Prove the confused-deputy fix against a running dev daemon (toolgate serve --dev).
#   bash scripts/sandbox.sh mcp
# TOOLGATE_URL overrides http://127.0.0.1:8693. Exits non-zero if an expectation fails.
set -euo pipefail
URL="${TOOLGATE_URL:-http://127.0.0.1:8693}"
scenario="${1:-mcp}"

json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin); print(v.get(sys.argv[1], ""))' "$1"; }
b64url() { printf '%s' "$1" | base64 | tr -d '=\n' | tr '/+' '_-'; }

# call METHOD PATH [JSON] -> prints the body, sets $STATUS
call() {
  local out
  out=$(curl -sS -X "$1" "$URL$2" -H 'Content-Type: application/json' ${3:+-d "$3"} -w '\n%{http_code}')
  STATUS="${out##*$'\n'}"
  BODY="${out%$'\n'*}"
}

register() {
  call POST /v1/mcp/tools "{\"tool_id\":\"$1\",\"name\":\"$2\",\"resource_uri\":\"$3\",\"server_id\":\"sandbox-mcp\"}"
  case "$STATUS" in
    201) echo "registered $1 -> $3" ;;
    409) echo "already registered: $1" ;;
    *) echo "FAIL: registering $1 answered $STATUS: $BODY" >&2; exit 1 ;;
  esac
}

mcp() {
  call GET /v1/sys/health
  [ "$STATUS" = 200 ] || { echo "FAIL: no toolgate at $URL (start it with: toolgate serve --dev)" >&2; exit 1; }
  echo "== 1. register two MCP tools"
  register code-search "Code Search" https://mcp.example.com/tools/code-search
  register sql-admin "SQL Admin" https://mcp.example.com/tools/sql-admin

  echo "== 2. exchange a dev stub credential for a token bound to code-search"
  local stub
  stub="$(b64url '{"alg":"none","typ":"JWT"}').$(b64url '{"sub":"sandbox-agent","namespace":"sandbox"}').stub"
  call POST /v1/exchange/token "{\"grant_type\":\"urn:ietf:params:oauth:grant-type:token-exchange\",\"subject_token\":\"$stub\",\"subject_token_type\":\"urn:ietf:params:oauth:token-type:jwt\",\"audience\":\"https://mcp.example.com/tools/code-search\"}"
  [ "$STATUS" = 200 ] || { echo "FAIL: exchange answered $STATUS: $BODY" >&2; exit 1; }
  TOKEN=$(printf '%s' "$BODY" | json_field access_token)
  echo "token minted (aud = https://mcp.example.com/tools/code-search, expires_in $(printf '%s' "$BODY" | json_field expires_in) s)"

  echo "== 3. verify the token on code-search (expect 200)"
  call POST /v1/mcp/verify "{\"token\":\"$TOKEN\",\"tool_id\":\"code-search\"}"
  echo "code-search: HTTP $STATUS"
  [ "$STATUS" = 200 ] || { echo "FAIL: expected 200 on code-search, got $STATUS: $BODY" >&2; exit 1; }
  echo "ALLOW code-search"

  echo "== 4. replay the same token against sql-admin (expect 403)"
  call POST /v1/mcp/verify "{\"token\":\"$TOKEN\",\"tool_id\":\"sql-admin\"}"
  local check
  check=$(printf '%s' "$BODY" | json_field check)
  echo "sql-admin: HTTP $STATUS check=$check"
  [ "$STATUS" = 403 ] && [ "$check" = audience ] || { echo "FAIL: expected 403 (check audience) on sql-admin, got $STATUS: $BODY" >&2; exit 1; }
  echo "DENY sql-admin (check: $check) -- confused deputy blocked"
}

case "$scenario" in
  mcp) mcp ;;
  *) echo "usage: $0 mcp" >&2; exit 2 ;;
esac
