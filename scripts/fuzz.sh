#!/usr/bin/env bash
# Run every fuzz target for N seconds each (default 30): bash scripts/fuzz.sh [seconds]
# Needs the nightly toolchain and cargo-fuzz (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
  mkdir -p "fuzz/corpus/$t"
  echo "== fuzz $t for ${secs}s"
  # A finding lands in fuzz/artifacts/$t: turn it into a regression test, then fix it.
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -max_len=20000 -timeout=10 >"$log" 2>&1; then
    # The panic message first: the backtrace after it can push it out of a short tail.
    grep -m 1 -A 4 'panicked at' "$log" || true
    tail -n 60 "$log"
    echo "FUZZ FAILURE in $t (see fuzz/artifacts/$t)"
    exit 1
  fi
  grep -E '^(Done|#[0-9]+ +DONE)' "$log" | tail -n 2
done
