#!/usr/bin/env bash
# Real-browser test of the dashboard: headless Chromium (Debian's package) driven by Playwright
# against a dev daemon that has seen one allow and one confused-deputy denial. Asserts through the
# DOM that the counts and the denial appear, that one more denial arrives live over /v1/events
# without a reload, the security headers, and no console errors or CSP violations; saves a
# screenshot of the MCP Security tab. Exits non-zero on any failure.
#   SCREENSHOT=path   where to save it (default scripts/dashboard/screenshot.png)
#   TOOLGATE_BIN=path a toolgate binary to use instead of building target/release/toolgate
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
for tool in node npm curl python3; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is required" >&2; exit 1; }
done
/usr/bin/chromium --version

echo "== playwright-core (npm, no browser download)"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ -f scripts/dashboard/package-lock.json ]; then
  npm ci --prefix scripts/dashboard --no-audit --no-fund --loglevel=error
else
  npm install --prefix scripts/dashboard --no-audit --no-fund --loglevel=error
fi

if [ -z "${TOOLGATE_BIN:-}" ]; then
  echo "== cargo build --release --bin toolgate"
  cargo build --release --bin toolgate
  TOOLGATE_BIN="$root/target/release/toolgate"
fi

tmp=$(mktemp -d)
daemon=""
cleanup() {
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$port"
"$TOOLGATE_BIN" serve --dev --listen "127.0.0.1:$port" --db "$tmp/toolgate.db" 2>"$tmp/daemon.log" &
daemon=$!
for _ in $(seq 1 100); do curl -sf "$URL/v1/sys/health" >/dev/null && break; sleep 0.1; done
curl -sf "$URL/v1/sys/health" >/dev/null || { echo "FAIL: the daemon did not start"; cat "$tmp/daemon.log"; exit 1; }

echo "== one allow on code-search and one audience denial on sql-admin (scripts/sandbox.sh mcp)"
TOOLGATE_URL="$URL" bash scripts/sandbox.sh mcp

echo "== a token for code-search for the live denial, and one operator revocation"
b64url() { printf '%s' "$1" | base64 | tr -d '=\n' | tr '/+' '_-'; }
stub="$(b64url '{"alg":"none","typ":"JWT"}').$(b64url '{"sub":"sandbox-agent","namespace":"sandbox"}').stub"
DENY_TOKEN=$(curl -sS -f -X POST "$URL/v1/exchange/token" -H 'Content-Type: application/json' \
  -d "{\"grant_type\":\"urn:ietf:params:oauth:grant-type:token-exchange\",\"subject_token\":\"$stub\",\"subject_token_type\":\"urn:ietf:params:oauth:token-type:jwt\",\"audience\":\"https://mcp.example.com/tools/code-search\"}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -sS -f -o /dev/null -X POST "$URL/v1/signals/revocations" -H 'Content-Type: application/json' \
  -d '{"kind":"subject","value":"wimse://dev.local/ns/sandbox/sa/compromised-agent","reason":"dashboard test"}'

# The audit writer batches; let the denial reach the log before the page seeds its feed from it.
for _ in $(seq 1 50); do
  curl -sf "$URL/v1/audit?decision=deny&limit=20" | grep -q '"target":"sql-admin"' && break
  sleep 0.1
done

echo "== headless chromium against $URL/dashboard"
TOOLGATE_URL="$URL" DENY_TOKEN="$DENY_TOKEN" SCREENSHOT="${SCREENSHOT:-$root/scripts/dashboard/screenshot.png}" \
  node scripts/dashboard/test.mjs
