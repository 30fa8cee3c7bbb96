#!/usr/bin/env bash
# Benchmark toolgate's hot paths against a bare hyper server, on loopback, with wrk.
#
#   bash scripts/bench.sh [seconds-per-run]      (default 10)
#
# Builds the release binary and the `bare_hello` example, starts both on free loopback ports
# (toolgate in --dev mode on a throw-away database), then measures with
# `wrk -t2 -c64 -d<secs>s --latency`, each run preceded by a 2 s warm-up:
#   1. bare_hello GET /                     (the ceiling)
#   2. verify, one token repeated           (expects 200)
#   3. verify, 20000 distinct tokens        (expects 200)
#   4. exchange, dev stub -> token          (expects 200)
#   5. verify denial, wrong audience        (expects 403, check "audience")
# Every response's status is checked by scripts/bench/bench.lua; any unexpected status, socket
# error or wrk failure fails the script. Results go to scripts/bench/results.md.
set -euo pipefail

SECS="${1:-10}"
if ! [[ "$SECS" =~ ^[1-9][0-9]*$ ]] || (( SECS > 240 )); then
    # Tokens live 300 s; keep every run well inside that.
    echo "bench.sh: seconds-per-run must be an integer in 1..240 (got '$SECS')" >&2
    exit 2
fi
THREADS=2
CONNS=64
WARMUP=2
NTOKENS=20000
WRK_ARGS=(-t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency)
WARM_ARGS=(-t"$THREADS" -c"$CONNS" -d"${WARMUP}s")

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/scripts/bench"
LUA="$BENCH/bench.lua"
TG_PY=(python3 "$BENCH/tg.py")
RESULTS="$BENCH/results.md"
cd "$ROOT"

log() { printf '== %s\n' "$*" >&2; }
fail() { printf 'bench.sh: FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update && apt-get install -y wrk
    else
        sudo apt-get update && sudo apt-get install -y wrk
    fi
fi
command -v wrk >/dev/null 2>&1 || fail "wrk not available"
command -v python3 >/dev/null 2>&1 || fail "python3 not available"

log "building (release)"
cargo build --release --bin toolgate --example bare_hello
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null \
    || echo "$ROOT/target")"
TOOLGATE="$TARGET_DIR/release/toolgate"
BARE="$TARGET_DIR/release/examples/bare_hello"
[[ -x "$TOOLGATE" ]] || fail "missing $TOOLGATE"
[[ -x "$BARE" ]] || fail "missing $BARE"

# --- processes and cleanup -----------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/toolgate-bench.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$?
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TG_PORT="$("${TG_PY[@]}" port)"
BARE_PORT="$("${TG_PY[@]}" port)"
while [[ "$BARE_PORT" == "$TG_PORT" ]]; do BARE_PORT="$("${TG_PY[@]}" port)"; done
TG="http://127.0.0.1:$TG_PORT"
BARE_URL="http://127.0.0.1:$BARE_PORT"

log "starting toolgate on $TG and bare_hello on $BARE_URL"
"$TOOLGATE" serve --dev --listen "127.0.0.1:$TG_PORT" --db "$TMP/tg.db" >"$TMP/toolgate.log" 2>&1 &
TG_PID=$!
PIDS+=("$TG_PID")
"$BARE" --listen "127.0.0.1:$BARE_PORT" >"$TMP/bare.log" 2>&1 &
BARE_PID=$!
PIDS+=("$BARE_PID")

"${TG_PY[@]}" wait "$TG" /v1/sys/health 20 || { cat "$TMP/toolgate.log" >&2; fail "toolgate did not come up"; }
"${TG_PY[@]}" wait "$BARE_URL" / 20 || { cat "$TMP/bare.log" >&2; fail "bare_hello did not come up"; }

CS_RES="https://mcp.example.com/tools/code-search"
SQL_RES="https://mcp.example.com/tools/sql-admin"
"${TG_PY[@]}" register "$TG" code-search "$CS_RES"
"${TG_PY[@]}" register "$TG" sql-admin "$SQL_RES"

# --- measuring -----------------------------------------------------------------------------
ROW_NAME=(); ROW_RPS=(); ROW_P50=(); ROW_P99=()

# run_wrk NAME URL EXPECT [VAR=VALUE...]: warm up, measure, check statuses, record a row.
run_wrk() {
    local name="$1" url="$2" expect="$3"
    shift 3
    local out="$TMP/wrk.$(( ${#ROW_NAME[@]} + 1 )).out"
    local phase args
    for phase in warmup measure; do
        if [[ $phase == warmup ]]; then args=("${WARM_ARGS[@]}"); else args=("${WRK_ARGS[@]}"); fi
        log "$name ($phase): wrk ${args[*]} $url"
        if ! env "$@" BENCH_EXPECT="$expect" BENCH_THREADS="$THREADS" \
            wrk "${args[@]}" -s "$LUA" "$url" >"$out" 2>&1; then
            cat "$out" >&2
            fail "$name: wrk failed ($phase)"
        fi
        local result
        result="$(grep '^BENCH_RESULT ' "$out" || true)"
        [[ -n "$result" ]] || { cat "$out" >&2; fail "$name: no BENCH_RESULT line from wrk ($phase)"; }
        local responses unexpected first
        responses="$(sed -E 's/.*responses=([0-9]+).*/\1/' <<<"$result")"
        unexpected="$(sed -E 's/.*unexpected=([0-9]+).*/\1/' <<<"$result")"
        first="$(sed -E 's/.*first_unexpected=([0-9]+).*/\1/' <<<"$result")"
        if [[ $phase == measure ]]; then
            cat "$out" >&2
            printf '   statuses: %s responses, %s not %s\n' "$responses" "$unexpected" "$expect" >&2
        fi
        (( responses > 0 )) || { cat "$out" >&2; fail "$name: no responses ($phase)"; }
        (( unexpected == 0 )) || { cat "$out" >&2; fail "$name: $unexpected responses were not $expect (first: $first) ($phase)"; }
        if grep -q '^  Socket errors:' "$out"; then
            cat "$out" >&2
            fail "$name: socket errors ($phase)"
        fi
    done
    local rps p50 p99
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    p50="$(awk '$1 == "50%" {print $2; exit}' "$out")"
    p99="$(awk '$1 == "99%" {print $2; exit}' "$out")"
    [[ -n "$rps" && -n "$p50" && -n "$p99" ]] || { cat "$out" >&2; fail "$name: cannot parse wrk output"; }
    ROW_NAME+=("$name")
    ROW_RPS+=("$rps")
    ROW_P50+=("$p50")
    ROW_P99+=("$p99")
}

# 1. The ceiling.
run_wrk "bare hyper GET / (ceiling)" "$BARE_URL/" 200

# 2. Verify, one token over and over.
TOKEN="$("${TG_PY[@]}" exchange "$TG" bench-repeat "$CS_RES")"
"${TG_PY[@]}" verify "$TG" "$TOKEN" code-search 200
"${TG_PY[@]}" verify-body "$TOKEN" code-search "$TMP/verify.json"
run_wrk "verify, repeated token (200)" "$TG/v1/mcp/verify" 200 \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/verify.json"

# 3. Verify, distinct tokens.
log "minting $NTOKENS distinct tokens"
"${TG_PY[@]}" mint "$TG" "$CS_RES" "$NTOKENS" "$TMP/tokens.txt" 16
[[ "$(wc -l <"$TMP/tokens.txt")" -eq "$NTOKENS" ]] || fail "token file has the wrong length"
run_wrk "verify, $NTOKENS distinct tokens (200)" "$TG/v1/mcp/verify" 200 \
    BENCH_TOKENS_FILE="$TMP/tokens.txt" BENCH_TOOL_ID=code-search

# 4. Exchange.
"${TG_PY[@]}" exchange-body bench-exchange "$CS_RES" "$TMP/exchange.json"
run_wrk "exchange, dev stub (200)" "$TG/v1/exchange/token" 200 \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/exchange.json"

# 5. Verify denial: a code-search token presented for sql-admin.
TOKEN="$("${TG_PY[@]}" exchange "$TG" bench-deny "$CS_RES")"
"${TG_PY[@]}" verify "$TG" "$TOKEN" sql-admin 403 audience
"${TG_PY[@]}" verify-body "$TOKEN" sql-admin "$TMP/deny.json"
run_wrk "verify denial, wrong audience (403)" "$TG/v1/mcp/verify" 403 \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/deny.json"

# --- report --------------------------------------------------------------------------------
kill -0 "$TG_PID" 2>/dev/null || fail "toolgate died during the run"
RSS_KB="$(awk '/^VmHWM:/ {print $2}' "/proc/$TG_PID/status")"
[[ -n "$RSS_KB" ]] || fail "cannot read VmHWM of toolgate"
RSS_MIB="$(awk -v k="$RSS_KB" 'BEGIN {printf "%.1f", k / 1024}')"
CPU="$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
CPU="${CPU:-unknown}"
NPROC="$(nproc)"
BARE_RPS="${ROW_RPS[0]}"

{
    printf '# toolgate benchmark\n\n'
    printf '%s · `nproc` = %s · CPU: %s · toolgate release build, `serve --dev`, fresh database\n\n' \
        "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$NPROC" "$CPU"
    printf 'Command: `wrk %s -s scripts/bench/bench.lua URL` per case, each after a %s s warm-up run (`bash scripts/bench.sh %s`). ' \
        "${WRK_ARGS[*]}" "$WARMUP" "$SECS"
    printf 'wrk and the servers share the same %s cores over loopback, so these figures are relative, not capacity numbers. ' "$NPROC"
    printf 'Every response status was checked (Lua `response()` callback).\n\n'
    printf '| case | requests/s | p50 | p99 | ratio to bare |\n'
    printf '|---|---:|---:|---:|---:|\n'
    for i in "${!ROW_NAME[@]}"; do
        ratio="$(awk -v a="${ROW_RPS[$i]}" -v b="$BARE_RPS" 'BEGIN {printf "%.2f", a / b}')"
        printf '| %s | %s | %s | %s | %s |\n' "${ROW_NAME[$i]}" "${ROW_RPS[$i]}" "${ROW_P50[$i]}" "${ROW_P99[$i]}" "$ratio"
    done
    printf '\ntoolgate peak RSS (VmHWM at the end of the run): %s MiB (%s kB)\n' "$RSS_MIB" "$RSS_KB"
} >"$RESULTS"

echo
cat "$RESULTS"
