#!/usr/bin/env bash
# Prove the confused-deputy fix and revocation against a running dev daemon (toolgate serve --dev).
#   bash scripts/sandbox.sh mcp          allow on code-search, 403 on sql-admin with the same token
#   bash scripts/sandbox.sh revocation   a CAEP session-revoked signal cuts an agent off at once
#   bash scripts/sandbox.sh mtls         a certificate-bound token (RFC 8705) for an X.509-SVID,
#                                        with curl --cert/--key/--cacert, against a dev daemon
#                                        serving TLS with the certificates of `toolgate dev-certs`
#                                        (README, "Certificate-bound tokens")
#   bash scripts/sandbox.sh idp          a real identity provider: panva's oidc-provider
#                                        (scripts/idp/) on loopback HTTPS and a production-mode
#                                        toolgate that trusts it by discovery; the provider's
#                                        client_credentials JWT exchanged for a tool token and
#                                        verified, then the provider's signing key rotated and
#                                        the next exchanges still 200. Starts both itself, on
#                                        ports of its own (needs node and npm; TOOLGATE_BIN, else
#                                        cargo build --release); IDP_TRUST=jwks_uri names the JWKS
#                                        instead of discovering it.
# TOOLGATE_URL overrides http://127.0.0.1:8693 (https://localhost:8443 for mtls); TOOLGATE_CERTS
# the dev-certs directory (./certs). Exits non-zero if an expectation fails. Nothing prints a
# token or a secret: claims, key ids and status codes only.
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

# The claims (or, with 0, the header) of a JWT on stdin, as compact JSON: never the token.
jwt_json() { python3 -c 'import base64,json,sys; s=sys.stdin.read().strip().split(".")[int(sys.argv[1])]; print(json.dumps(json.loads(base64.urlsafe_b64decode(s+"="*(-len(s)%4))),sort_keys=True,separators=(",",":")))' "${1:-1}"; }
jwt_member() { jwt_json "$1" | json_field "$2"; }   # PART MEMBER, the JWT on stdin
# Compact JSON of a JSON document on stdin, passed through a Python expression over `v`.
json_pick() { python3 -c 'import json,sys; v=json.load(sys.stdin); print(json.dumps(eval(sys.argv[1]),sort_keys=True,separators=(",",":")))' "$1"; }

IDP_PIDS=()
idp_cleanup() {
  local rc=$?
  for p in "${IDP_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" != 0 ] && [ -n "${IDP_TMP:-}" ]; then   # the servers' own words (no tokens in them)
    for f in idp toolgate; do [ -f "$IDP_TMP/$f.log" ] && { echo "--- $f.log" >&2; tail -n 15 "$IDP_TMP/$f.log" >&2; }; done
  fi
  if [ -n "${IDP_TMP:-}" ]; then rm -rf "$IDP_TMP"; fi
}
# wait_up NAME PID URL: poll until URL answers over the sandbox's CA, at most 10 s.
wait_up() {
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --cacert "$IDP_TMP/certs/ca.pem" "$3" && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "FAIL: $1 did not come up at $3" >&2; tail -n 20 "$IDP_TMP/$1.log" >&2; exit 1
}
# idp_token RESOURCE: the client_credentials grant at the provider -> sets AT (never printed).
idp_token() {
  local out status body
  out=$(curl -sS --cacert "$IDP_TMP/certs/ca.pem" -H @"$IDP_TMP/client.header" "$IDP/token" \
    -d grant_type=client_credentials --data-urlencode "resource=$1" -d scope=code:search -w '\n%{http_code}')
  status="${out##*$'\n'}"
  body="${out%$'\n'*}"
  [ "$status" = 200 ] || { echo "FAIL: the provider's token endpoint answered $status: $body" >&2; exit 1; }
  AT=$(printf '%s' "$body" | json_field access_token)
  echo "IdP token: header $(printf '%s' "$AT" | jwt_json 0)"
  echo "  claims $(printf '%s' "$AT" | jwt_json 1 | json_pick '{**{k: x for k, x in v.items() if k not in ("jti", "iat", "exp")}, "exp-iat": v["exp"] - v["iat"]}')"
}
# idp_exchange SUBJECT_TOKEN AUDIENCE WANT: RFC 8693 with an access-token subject -> TOKEN.
IDP_ISSUED=0
idp_exchange() {
  call POST /v1/exchange/token "{\"grant_type\":\"urn:ietf:params:oauth:grant-type:token-exchange\",\"subject_token\":\"$1\",\"subject_token_type\":\"urn:ietf:params:oauth:token-type:access_token\",\"audience\":\"$2\"}"
  [ "$STATUS" = "$3" ] || { echo "FAIL: exchange answered $STATUS, expected $3: $BODY" >&2; exit 1; }
  if [ "$STATUS" = 200 ]; then
    IDP_ISSUED=$((IDP_ISSUED + 1))
    TOKEN=$(printf '%s' "$BODY" | json_field access_token)
    echo "exchange: HTTP 200, tool token $(printf '%s' "$TOKEN" | jwt_json 1 | json_pick '{k: v[k] for k in ("sub", "aud", "caps", "src") if k in v}')"
  else
    echo "exchange: HTTP $STATUS $BODY"
  fi
}
# idp_verify TOOL_ID WANT [CHECK]: the decision on $TOKEN, its claims cut to sub and caps.
idp_verify() {
  call POST /v1/mcp/verify "{\"token\":\"$TOKEN\",\"tool_id\":\"$1\"}"
  local check
  check=$(printf '%s' "$BODY" | json_field check)
  [ "$STATUS" = "$2" ] && [ "$check" = "${3:-}" ] \
    || { echo "FAIL: verify on $1 answered $STATUS, expected $2 ${3:-}: $BODY" >&2; exit 1; }
  echo "verify $1: HTTP $STATUS $(printf '%s' "$BODY" | json_pick '{**{k: x for k, x in v.items() if k != "claims"}, **({"sub": v["claims"]["sub"], "caps": v["claims"].get("caps", [])} if "claims" in v else {})}')"
}
# idp_keys_seen: toolgate's view of the provider's keys (GET /v1/issuers) -> sets SEEN_KIDS.
idp_keys_seen() {
  call GET /v1/issuers "" "${IDP_ADMIN[@]}"
  [ "$STATUS" = 200 ] || { echo "FAIL: /v1/issuers answered $STATUS: $BODY" >&2; exit 1; }
  local mine
  mine=$(printf '%s' "$BODY" | json_pick '[{k: i.get(k) for k in ("issuer", "source", "state", "jwks_uri", "last_fetch")} | {"kids": [k["kid"] for k in i["keys"]]} for i in v["issuers"] if i["role"] == "subject"][0]')
  echo "toolgate's keys for the provider: $mine"
  SEEN_KIDS=$(printf '%s' "$mine" | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["kids"]))')
}
jwks_kids() { curl -sS --cacert "$IDP_TMP/certs/ca.pem" "$IDP/jwks" | python3 -c 'import json,sys; print(" ".join(k["kid"] for k in json.load(sys.stdin)["keys"]))'; }

idp() {
  local root trust=${IDP_TRUST:-discovery}
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  case "$trust" in discovery|jwks_uri) ;; *) echo "IDP_TRUST is discovery or jwks_uri" >&2; exit 2 ;; esac
  for tool in node npm curl python3; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool is required" >&2; exit 1; }
  done
  echo "== 0. panva's oidc-provider (npm ci --prefix scripts/idp) and toolgate"
  npm ci --prefix "$root/scripts/idp" --no-audit --no-fund --loglevel=error
  local bin=${TOOLGATE_BIN:-}
  if [ -z "$bin" ]; then
    (cd "$root" && cargo build --release --bin toolgate)
    bin="$root/target/release/toolgate"
  fi
  IDP_TMP=$(mktemp -d)
  trap idp_cleanup EXIT
  "$bin" dev-certs "$IDP_TMP/certs" >/dev/null
  local free='import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
  local idp_port tg_port
  idp_port=$(python3 -c "$free")
  tg_port=$(python3 -c "$free")
  IDP="https://127.0.0.1:$idp_port"
  URL="https://127.0.0.1:$tg_port"   # toolgate's issuer: the audience of the provider's tokens
  TLS_ARGS=(--cacert "$IDP_TMP/certs/ca.pem")
  local other=https://api.other.example   # a resource the client may also ask for: not toolgate

  echo "== 1. the identity provider at $IDP: client_credentials, JWT access tokens for $URL"
  IDP_PORT=$idp_port IDP_CERTS="$IDP_TMP/certs" IDP_STATE="$IDP_TMP/idp-state" IDP_RESOURCES="$URL $other" \
    node "$root/scripts/idp/provider.mjs" >"$IDP_TMP/idp.log" 2>&1 &
  local idp_pid=$!
  IDP_PIDS+=("$idp_pid")
  wait_up idp "$idp_pid" "$IDP/.well-known/openid-configuration"
  echo "discovery: $(curl -sS --cacert "$IDP_TMP/certs/ca.pem" "$IDP/.well-known/openid-configuration" | json_pick '{k: v[k] for k in ("issuer", "jwks_uri", "token_endpoint")}')"
  local kid1
  kid1=$(jwks_kids)
  echo "JWKS kids: $kid1"
  # The client's secret stays in files: a Basic header for curl, made from the provider's 0600 file.
  (umask 077; python3 -c 'import base64,json,sys,urllib.parse as u; c=json.load(open(sys.argv[1])); print("Authorization: Basic "+base64.b64encode((u.quote_plus(c["client_id"])+":"+u.quote_plus(c["client_secret"])).encode()).decode())' \
    "$IDP_TMP/idp-state/client.json" >"$IDP_TMP/client.header")

  echo "== 2. toolgate at $URL, production mode, trusting $IDP by ${trust/_/ }"
  local keys='"discovery":true'
  [ "$trust" = jwks_uri ] && keys="\"jwks_uri\":\"$IDP/jwks\""
  printf '{"issuer":"%s",\n "trusted_issuers":[{"issuer":"%s",%s,"ca_file":"certs/ca.pem","audience":"%s","trust_domain":"idp.example"}]}\n' \
    "$URL" "$IDP" "$keys" "$URL" >"$IDP_TMP/toolgate.json"
  sed 's/^/  /' "$IDP_TMP/toolgate.json"
  (umask 077; head -c 32 /dev/urandom | base64 >"$IDP_TMP/admin-token"
   printf 'Authorization: Bearer %s\n' "$(cat "$IDP_TMP/admin-token")" >"$IDP_TMP/admin.header")
  "$bin" serve --listen "127.0.0.1:$tg_port" --db "$IDP_TMP/toolgate.db" --config "$IDP_TMP/toolgate.json" \
    --admin-token-file "$IDP_TMP/admin-token" --tls-cert "$IDP_TMP/certs/server.pem" --tls-key "$IDP_TMP/certs/server.key" \
    >"$IDP_TMP/toolgate.log" 2>&1 &
  local tg_pid=$!
  IDP_PIDS+=("$tg_pid")
  wait_up toolgate "$tg_pid" "$URL/v1/sys/health"
  IDP_ADMIN=(-H @"$IDP_TMP/admin.header")   # the admin token, from its file
  local res=https://mcp.example.com/tools/code-search
  call POST /v1/mcp/tools "{\"tool_id\":\"code-search\",\"resource_uri\":\"$res\",\"required_capabilities\":[\"code:search\"]}" "${IDP_ADMIN[@]}"
  [ "$STATUS" = 201 ] || { echo "FAIL: registering code-search answered $STATUS: $BODY" >&2; exit 1; }
  call POST /v1/mcp/tools '{"tool_id":"sql-admin","resource_uri":"https://mcp.example.com/tools/sql-admin"}' "${IDP_ADMIN[@]}"
  [ "$STATUS" = 201 ] || { echo "FAIL: registering sql-admin answered $STATUS: $BODY" >&2; exit 1; }
  echo "registered code-search (requires the capability code:search) and sql-admin"
  idp_keys_seen
  [ "$SEEN_KIDS" = "$kid1" ] || { echo "FAIL: toolgate holds kids '$SEEN_KIDS', the provider publishes $kid1" >&2; exit 1; }

  echo "== 3. a client_credentials token from the provider (resource = toolgate), exchanged for code-search"
  idp_token "$URL"
  local kid first=$AT
  kid=$(printf '%s' "$AT" | jwt_member 0 kid)
  [ "$kid" = "$kid1" ] || { echo "FAIL: the token's kid $kid is not the published key $kid1" >&2; exit 1; }
  idp_exchange "$AT" "$res" 200
  idp_verify code-search 200
  idp_verify sql-admin 403 audience
  echo "ALLOW code-search, DENY sql-admin (check: audience) -- the provider's client is held to one tool"

  echo "== 4. a token the provider issued for another resource is no credential for toolgate (expect 401)"
  idp_token "$other"
  idp_exchange "$AT" "$res" 401

  echo "== 5. rotate the provider's signing key (SIGUSR2): a new key in front, the old one still published"
  kill -USR2 "$idp_pid"
  local kids=$kid1
  for _ in $(seq 1 100); do
    kids=$(jwks_kids)
    [ "${kids%% *}" != "$kid1" ] && break
    sleep 0.1
  done
  local kid2=${kids%% *}
  [ "$kid2" != "$kid1" ] && [ "$kids" = "$kid2 $kid1" ] || { echo "FAIL: the JWKS did not rotate: $kids" >&2; exit 1; }
  echo "JWKS kids: $kids"
  idp_token "$URL"
  kid=$(printf '%s' "$AT" | jwt_member 0 kid)
  [ "$kid" = "$kid2" ] || { echo "FAIL: the token after the rotation is signed by $kid, not the new key $kid2" >&2; exit 1; }
  echo "-- signed by the new key, which toolgate has not seen yet: it refetches the provider's keys"
  idp_exchange "$AT" "$res" 200
  idp_keys_seen
  [ "$SEEN_KIDS" = "$kid2 $kid1" ] || { echo "FAIL: toolgate holds kids '$SEEN_KIDS' after the refresh, not $kids" >&2; exit 1; }
  idp_verify code-search 200
  echo "-- the token the old key signed before the rotation: still published, still exchanged"
  idp_exchange "$first" "$res" 200

  echo "== 6. toolgate's counters: every exchange issued but the one for another resource"
  call GET /metrics "" "${IDP_ADMIN[@]}"
  [ "$STATUS" = 200 ] || { echo "FAIL: /metrics answered $STATUS" >&2; exit 1; }
  local counts want="toolgate_exchanges_total{result=\"issued\"} $IDP_ISSUED toolgate_exchanges_total{result=\"invalid_client\"} 1"
  counts=$(printf '%s\n' "$BODY" | grep '^toolgate_exchanges_total' | grep -v ' 0$' | paste -sd ' ')
  echo "$counts"
  [ "$counts" = "$want" ] || { echo "FAIL: expected $want" >&2; exit 1; }
  # One unknown kid, one refresh at once (none held back by the 30 s limit), no failed fetch.
  counts=$(printf '%s\n' "$BODY" | grep -E '^toolgate_issuer_(unknown_kid|key_fetches)_total' | sed 's/issuer="[^"]*",role="subject",//' | paste -sd ' ')
  echo "$counts"
  case " $counts " in
    *'{outcome="refreshed"} 1 '*'{outcome="limited"} 0 '*) ;;
    *) echo "FAIL: expected one unknown-kid refresh and none limited" >&2; exit 1 ;;
  esac
  case " $counts " in *'{result="error"} 0 '*) ;; *) echo "FAIL: a fetch of the provider's keys failed" >&2; exit 1 ;; esac
  echo "IDP: $IDP_ISSUED exchanges of the provider's tokens issued across a signing-key rotation, none failed"
}

case "$scenario" in
  mcp) mcp ;;
  revocation) revocation ;;
  mtls) mtls ;;
  idp) idp ;;
  *) echo "usage: $0 mcp|revocation|mtls|idp" >&2; exit 2 ;;
esac
