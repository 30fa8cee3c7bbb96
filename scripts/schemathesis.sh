#!/usr/bin/env bash
# Property-based tests of the REST contract: Schemathesis (PyPI, pinned) reads GET /openapi.json
# from a live dev daemon and sends generated requests, valid and invalid, to every operation, with
# its default checks (no 5xx, responses and their media types and headers match the document,
# status codes documented, valid data accepted, invalid data refused, undocumented methods 405
# with Allow, ...). Bounded: at most MAX_EXAMPLES cases per operation and phase, and MAX_TIME
# seconds in all. Exits non-zero on any finding, and if the daemon logged a panic.
#   MAX_EXAMPLES=n    (default 30)      MAX_TIME=seconds (default 150)
#   SEED=n            a seed, to replay a run (default: a fresh one, printed)
#   TOOLGATE_BIN=path a toolgate binary to use instead of building target/release/toolgate
# No stateful sequences: the checks run on each request. scripts/schemathesis.toml holds the
# per-operation settings that differ from Schemathesis' defaults, each with why.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
VERSION=4.32.5
MAX_EXAMPLES=${MAX_EXAMPLES:-30}
MAX_TIME=${MAX_TIME:-150}

venv="$root/target/schemathesis-venv"
if ! "$venv/bin/st" --version 2>/dev/null | grep -qx "st, version $VERSION"; then
  echo "== schemathesis $VERSION (PyPI) into $venv"
  python3 -m venv "$venv" 2>/dev/null || {
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi
"$venv/bin/st" --version

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
"$TOOLGATE_BIN" serve --dev --listen "127.0.0.1:$port" --db "$tmp/toolgate.db" 2>"$tmp/daemon.log" &
daemon=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/v1/sys/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/v1/sys/health" >/dev/null || { cat "$tmp/daemon.log"; exit 1; }

seed=${SEED:-$(python3 -c 'import random; print(random.randrange(2**32))')}
echo "== schemathesis run (seed $seed, at most $MAX_EXAMPLES examples per operation, $MAX_TIME s)"
status=0
# One worker: with two, Hypothesis' source lookups race (an internal KeyError, reported as an error).
(cd "$tmp" && "$venv/bin/st" --config-file "$root/scripts/schemathesis.toml" \
  run "http://127.0.0.1:$port/openapi.json" --phases examples,coverage,fuzzing \
  --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --seed "$seed" \
  --workers 1 --request-timeout 10 --generation-database none --no-color) || status=$?

if grep -q "panicked" "$tmp/daemon.log"; then
  echo "FAIL: the daemon panicked:" >&2
  grep -A5 "panicked" "$tmp/daemon.log" >&2
  status=1
fi
kill -TERM "$daemon"; wait "$daemon" || true; daemon=""
if [ "$status" -ne 0 ]; then
  echo "FAIL: schemathesis reported findings (replay with SEED=$seed)" >&2
  exit "$status"
fi
echo "schemathesis: no findings"
