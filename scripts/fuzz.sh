#!/usr/bin/env bash
# Run every fuzz target for N seconds each (default 30): bash scripts/fuzz.sh [seconds]
# Needs the nightly toolchain and cargo-fuzz (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=$(cargo +nightly fuzz list --fuzz-dir fuzz)
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  echo "== fuzz $t for ${secs}s"
  # Findings land in fuzz/artifacts/$t; turn each into a regression test before fixing it.
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -max_len=20000 -timeout=10 -print_final_stats=1 2>&1 | tail -n 12
done
