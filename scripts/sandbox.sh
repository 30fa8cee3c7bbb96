#!/usr/bin/env bash
# Prove the confused-deputy fix and revocation against a running dev daemon (toolgate serve --dev).
#   bash scripts/sandbox.sh mcp          allow on code-search, 403 on sql-admin with the same token
#   bash scripts/sandbox.sh revocation   a CAEP session-revoked signal cuts an agent off at once
#   bash scripts/sandbox.sh mtls         a certificate-bound token (RFC 8705) for an X.509-SVID,
#                                        with curl --cert/--key/--cacert, against a dev daemon
#                                        serving TLS with the certificates of `toolgate dev-certs`
#                                        (README, "Certificate-bound tokens")
# TOOLGATE_URL overrides http://127.0.0.1:8693 (https://localhost:8443 for mtls); TOOLGATE_CERTS
# the dev-certs directory (./certs). Exits non-zero if an expectation fails.
set -euo pipefail
scenario="${1:-mcp}"
CERTS="${TOOLGATE_CERTS:-./certs}"
if [ "$scenario" = mtls ]; then URL="${TOOLGATE_URL:-https://localhost:8443}"; else URL="${TOOLGATE_URL:-http://127.0.0.1:8693}"; fi
TLS_ARGS=()
case "$URL" in https://*) TLS_ARGS=(--cacert "$CERTS/ca.pem") ;; esac

json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin); print(v.get(sys.argv[1], ""))' "$1"; }
b64url() { printf '%s' "$1" | base64 | tr -d '=\n' | tr '/+' '_-'; }

# call METHOD PATH [JSON [CURL_ARGS...]] -> sets $STATUS and $BODY
call() {
  local out
  out=$(curl -sS "${TLS_ARGS[@]}" "${@:4}" -X "$1" "$URL$2" -H 'Content-Type: application/json' ${3:+-d "$3"} -w '\n%{http_code}')
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

exchange_for() { # SUB AUDIENCE -> sets STATUS, BODY
  local stub
  stub="$(b64url '{"alg":"none","typ":"JWT"}').$(b64url "{\"sub\":\"$1\",\"namespace\":\"sandbox\"}").stub"
  call POST /v1/exchange/token "{\"grant_type\":\"urn:ietf:params:oauth:grant-type:token-exchange\",\"subject_token\":\"$stub\",\"subject_token_type\":\"urn:ietf:params:oauth:token-type:jwt\",\"audience\":\"$2\"}"
}

revocation() {
  call GET /v1/sys/health
  [ "$STATUS" = 200 ] || { echo "FAIL: no toolgate at $URL (start it with: toolgate serve --dev)" >&2; exit 1; }
  register code-search "Code Search" https://mcp.example.com/tools/code-search
  # A fresh agent name per run, so the scenario can be repeated against the same daemon.
  local agent="agent-$(date +%s)-$$"
  echo "== 1. exchange a token for $agent and use it"
  exchange_for "$agent" https://mcp.example.com/tools/code-search
  [ "$STATUS" = 200 ] || { echo "FAIL: exchange answered $STATUS: $BODY" >&2; exit 1; }
  TOKEN=$(printf '%s' "$BODY" | json_field access_token)
  local sub
  sub=$(printf '%s' "$TOKEN" | cut -d. -f2 | tr '_-' '/+' | python3 -c 'import base64,json,sys; s=sys.stdin.read().strip(); print(json.loads(base64.b64decode(s+"="*(-len(s)%4)))["sub"])')
  call POST /v1/mcp/verify "{\"token\":\"$TOKEN\",\"tool_id\":\"code-search\"}"
  echo "verify before the signal: HTTP $STATUS"
  [ "$STATUS" = 200 ] || { echo "FAIL: expected 200 before revocation, got $STATUS: $BODY" >&2; exit 1; }

  echo "== 2. a CAEP session-revoked signal for $sub"
  call POST /v1/signals/events "{\"iss\":\"https://sandbox-siem.example.com\",\"jti\":\"sandbox-$agent\",\"iat\":$(date +%s),\"aud\":\"starfly\",\"sub_id\":{\"format\":\"uri\",\"uri\":\"$sub\"},\"events\":{\"https://schemas.openid.net/secevent/caep/event-type/session-revoked\":{\"reason_admin\":{\"en\":\"sandbox drill\"}}}}"
  echo "signal: HTTP $STATUS $BODY"
  [ "$STATUS" = 202 ] || { echo "FAIL: expected 202 for the signal, got $STATUS" >&2; exit 1; }

  echo "== 3. the agent's very next verify and exchange"
  call POST /v1/mcp/verify "{\"token\":\"$TOKEN\",\"tool_id\":\"code-search\"}"
  local check
  check=$(printf '%s' "$BODY" | json_field check)
  echo "verify: HTTP $STATUS check=$check"
  [ "$STATUS" = 403 ] && [ "$check" = revocation ] || { echo "FAIL: expected 403 (check revocation), got $STATUS: $BODY" >&2; exit 1; }
  exchange_for "$agent" https://mcp.example.com/tools/code-search
  echo "exchange: HTTP $STATUS error=$(printf '%s' "$BODY" | json_field error)"
  [ "$STATUS" = 403 ] || { echo "FAIL: expected 403 for the exchange, got $STATUS: $BODY" >&2; exit 1; }
  echo "REVOKED $sub -- refused at verify and at exchange"
}

mtls() {
  call GET /v1/sys/health
  [ "$STATUS" = 200 ] || { echo "FAIL: no TLS toolgate at $URL (see the README: toolgate dev-certs, then serve with --tls-cert)" >&2; exit 1; }
  local svid=(--cert "$CERTS/client.pem" --key "$CERTS/client.key")
  local res=https://mcp.example.com/tools/deploy
  echo "== 1. register deploy: its tokens must be bound to a client certificate"
  call POST /v1/mcp/tools "{\"tool_id\":\"deploy\",\"resource_uri\":\"$res\",\"sender_constraint\":\"mtls\"}"
  case "$STATUS" in 201) echo "registered deploy (sender_constraint mtls)" ;; 409) echo "already registered: deploy" ;;
    *) echo "FAIL: registering deploy answered $STATUS: $BODY" >&2; exit 1 ;; esac

  echo "== 2. exchange over mutual TLS: the X.509-SVID is the credential"
  local grant='"grant_type":"urn:ietf:params:oauth:grant-type:token-exchange"'
  call POST /v1/exchange/token "{$grant,\"subject_token_type\":\"urn:starfly:token-type:mtls\",\"audience\":\"$res\"}" "${svid[@]}"
  [ "$STATUS" = 200 ] || { echo "FAIL: exchange answered $STATUS: $BODY" >&2; exit 1; }
  TOKEN=$(printf '%s' "$BODY" | json_field access_token)
  local claims
  claims=$(printf '%s' "$TOKEN" | cut -d. -f2 | tr '_-' '/+' | python3 -c 'import base64,json,sys; s=sys.stdin.read().strip(); c=json.loads(base64.b64decode(s+"="*(-len(s)%4))); print(c["sub"], "cnf.x5t#S256=" + c["cnf"]["x5t#S256"])')
  echo "token minted for $claims"

  echo "== 3. the tool server reports the certificate it saw: the right one (expect 200)"
  local der
  der=$(sed '/-----/d' "$CERTS/client.pem" | tr -d '\n')  # a PEM body is the base64 of the DER
  call POST /v1/mcp/verify "{\"token\":\"$TOKEN\",\"tool_id\":\"deploy\",\"client_cert\":\"$der\"}"
  [ "$STATUS" = 200 ] || { echo "FAIL: expected 200 with the bound certificate, got $STATUS: $BODY" >&2; exit 1; }
  echo "ALLOW deploy with the certificate the token is bound to"

  echo "== 4. a thief replays the token without the certificate (expect 403, check mtls)"
  call POST /v1/mcp/verify "{\"token\":\"$TOKEN\",\"tool_id\":\"deploy\"}"
  local check
  check=$(printf '%s' "$BODY" | json_field check)
  [ "$STATUS" = 403 ] && [ "$check" = mtls ] || { echo "FAIL: expected 403 (check mtls), got $STATUS: $BODY" >&2; exit 1; }
  echo "DENY deploy (check: $check) -- a stolen bound token is useless"

  echo "== 5. without a client certificate: a stub subject for deploy (expect 400), the certificate credential for any tool (expect 401)"
  local stub
  stub="$(b64url '{"alg":"none","typ":"JWT"}').$(b64url '{"sub":"sandbox-agent","namespace":"sandbox"}').stub"
  call POST /v1/exchange/token "{$grant,\"subject_token\":\"$stub\",\"subject_token_type\":\"urn:ietf:params:oauth:token-type:jwt\",\"audience\":\"$res\"}"
  [ "$STATUS" = 400 ] || { echo "FAIL: expected 400 without a certificate, got $STATUS: $BODY" >&2; exit 1; }
  echo "REFUSED (stub subject, no certificate to bind to): $(printf '%s' "$BODY" | json_field error)"
  call POST /v1/exchange/token "{$grant,\"subject_token_type\":\"urn:starfly:token-type:mtls\",\"audience\":\"https://mcp.example.com/tools/any\"}"
  [ "$STATUS" = 401 ] || { echo "FAIL: expected 401 for the certificate credential without a certificate, got $STATUS: $BODY" >&2; exit 1; }
  echo "REFUSED (certificate credential, no certificate): $(printf '%s' "$BODY" | json_field error)"
}

case "$scenario" in
  mcp) mcp ;;
  revocation) revocation ;;
  mtls) mtls ;;
  *) echo "usage: $0 mcp|revocation|mtls" >&2; exit 2 ;;
esac
