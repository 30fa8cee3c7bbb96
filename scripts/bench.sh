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
# Then, with the first toolgate left running, a second toolgate on its own database:
#   - started once on a new database (schema and keys), then 3 times with 0 revocations, then,
#     after 1 000 000 subject revocations are bulk-inserted (Python sqlite3), 3 times with them:
#     start-up time = launch until GET /v1/sys/health answers 200 (polled every 10 ms), median
#     of 3; VmRSS/VmHWM after start-up and after the verify run below
#   - exchange for a revoked subject (expects 403 access_denied: the rows were loaded)
#   6. verify, repeated token, no revocations  (a third toolgate on a new database; expects 200)
#   7. verify, repeated token, 1M revocations  (second toolgate; expects 200), right after 6;
#      its ratio to 6 is reported with PASS/FAIL against +-10% (a measurement: FAIL does not
#      fail the script)
# Before and after every wrk run (warm-up and measurement) the script waits until the audit
# queue of every running toolgate is empty (GET /v1/stats), so that no run pays for the last
# one's log. Each row also gets the server's CPU time per response (from /proc/PID/stat).
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
NREVOKED=1000000
STARTS=3
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

# mem PID FIELD: FIELD (VmRSS, VmHWM) of PID in kB.
mem() {
    local kb
    kb="$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status")"
    [[ -n "$kb" ]] || fail "cannot read $2 of pid $1"
    echo "$kb"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
# cpu_ms PID: user + system CPU time PID has used so far, in ms (resolution: one clock tick).
# Less sensitive than wall time to other work on the machine.
CLK_TCK="$(getconf CLK_TCK)"
cpu_ms() {
    local ms
    ms="$(sed -E 's/^.*\) //' "/proc/$1/stat" | awk -v t="$CLK_TCK" '{printf "%.0f", ($12 + $13) * 1000 / t}')"
    [[ -n "$ms" ]] || fail "cannot read the CPU time of pid $1"
    echo "$ms"
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
# "1 000 000"
grouped() { sed -E ':a; s/([0-9])([0-9]{3})($| )/\1 \2\3/; ta' <<<"$1"; }

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

# Other work on the machine skews every figure: the load averages go into the report.
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

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
# Every toolgate that is up: each run first waits for all their audit queues to drain.
TG_URLS=("$TG")
"${TG_PY[@]}" wait "$BARE_URL" / 20 || { cat "$TMP/bare.log" >&2; fail "bare_hello did not come up"; }

CS_RES="https://mcp.example.com/tools/code-search"
SQL_RES="https://mcp.example.com/tools/sql-admin"
"${TG_PY[@]}" register "$TG" code-search "$CS_RES"
"${TG_PY[@]}" register "$TG" sql-admin "$SQL_RES"

# --- measuring -----------------------------------------------------------------------------
ROW_NAME=(); ROW_RPS=(); ROW_P50=(); ROW_P99=(); ROW_CPU=()

# run_wrk NAME URL EXPECT SERVER_PID [VAR=VALUE...]: warm up, measure, check statuses, record
# a row, with the server's CPU time (user + system, all threads, its audit writer included) per
# response of the measured run: less disturbed than requests/s by other work on the machine.
run_wrk() {
    local name="$1" url="$2" expect="$3" server="$4"
    shift 4
    local cpu0 cpu1
    local out="$TMP/wrk.$(( ${#ROW_NAME[@]} + 1 )).out"
    local phase args
    for phase in warmup measure; do
        if [[ $phase == warmup ]]; then args=("${WARM_ARGS[@]}"); else args=("${WRK_ARGS[@]}"); fi
        "${TG_PY[@]}" quiesce 120 "${TG_URLS[@]}" || fail "$name: audit queues did not drain ($phase)"
        log "$name ($phase): wrk ${args[*]} $url"
        cpu0="$(cpu_ms "$server")"
        if ! env "$@" BENCH_EXPECT="$expect" BENCH_THREADS="$THREADS" \
            wrk "${args[@]}" -s "$LUA" "$url" >"$out" 2>&1; then
            cat "$out" >&2
            fail "$name: wrk failed ($phase)"
        fi
        # The records of this run are written (and their CPU counted) before the next starts.
        "${TG_PY[@]}" quiesce 120 "${TG_URLS[@]}" || fail "$name: audit queues did not drain ($phase)"
        cpu1="$(cpu_ms "$server")"
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
    ROW_CPU+=("$(awk -v c=$(( cpu1 - cpu0 )) -v n="$responses" 'BEGIN {printf "%.0f", c * 1000 / n}')")
    ROW_P50+=("$p50")
    ROW_P99+=("$p99")
}

# 1. The ceiling.
run_wrk "bare hyper GET / (ceiling)" "$BARE_URL/" 200 "$BARE_PID"

# 2. Verify, one token over and over.
TOKEN="$("${TG_PY[@]}" exchange "$TG" bench-repeat "$CS_RES")"
"${TG_PY[@]}" verify "$TG" "$TOKEN" code-search 200
"${TG_PY[@]}" verify-body "$TOKEN" code-search "$TMP/verify.json"
run_wrk "verify, repeated token (200)" "$TG/v1/mcp/verify" 200 "$TG_PID" \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/verify.json"

# 3. Verify, distinct tokens.
log "minting $NTOKENS distinct tokens"
"${TG_PY[@]}" mint "$TG" "$CS_RES" "$NTOKENS" "$TMP/tokens.txt" 16
[[ "$(wc -l <"$TMP/tokens.txt")" -eq "$NTOKENS" ]] || fail "token file has the wrong length"
run_wrk "verify, $NTOKENS distinct tokens (200)" "$TG/v1/mcp/verify" 200 "$TG_PID" \
    BENCH_TOKENS_FILE="$TMP/tokens.txt" BENCH_TOOL_ID=code-search

# 4. Exchange.
"${TG_PY[@]}" exchange-body bench-exchange "$CS_RES" "$TMP/exchange.json"
run_wrk "exchange, dev stub (200)" "$TG/v1/exchange/token" 200 "$TG_PID" \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/exchange.json"

# 5. Verify denial: a code-search token presented for sql-admin.
TOKEN="$("${TG_PY[@]}" exchange "$TG" bench-deny "$CS_RES")"
"${TG_PY[@]}" verify "$TG" "$TOKEN" sql-admin 403 audience
"${TG_PY[@]}" verify-body "$TOKEN" sql-admin "$TMP/deny.json"
run_wrk "verify denial, wrong audience (403)" "$TG/v1/mcp/verify" 403 "$TG_PID" \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/deny.json"

kill -0 "$TG_PID" 2>/dev/null || fail "toolgate died during the run"
RSS_KB="$(awk '/^VmHWM:/ {print $2}' "/proc/$TG_PID/status")"
[[ -n "$RSS_KB" ]] || fail "cannot read VmHWM of toolgate"

# --- one million revocations ---------------------------------------------------------------
# The first toolgate keeps running (idle); a second one runs on its own database and port.
REV_DB="$TMP/revoked.db"
REV_LOG="$TMP/toolgate-revoked.log"
REV_PORT="$("${TG_PY[@]}" port)"
while [[ "$REV_PORT" == "$TG_PORT" || "$REV_PORT" == "$BARE_PORT" ]]; do REV_PORT="$("${TG_PY[@]}" port)"; done
REV="http://127.0.0.1:$REV_PORT"

# start_timed: launch toolgate on $REV_DB, wait for health; sets STARTED_PID and STARTED_MS
# (launch to first 200, in ms). The poller is started, and has said it is running, before the
# launch, so that Python's start-up time is not counted.
READY_FIFO="$TMP/ready.fifo"
mkfifo "$READY_FIFO"
# Opened read-write, so that neither this open nor the poller's blocks.
exec {READY_FD}<>"$READY_FIFO"
start_timed() {
    local poller t0 up rc=0
    "${TG_PY[@]}" startup-wait "$REV" /v1/sys/health 60 "$READY_FIFO" >"$TMP/up.out" &
    poller=$!
    read -r -t 30 -u "$READY_FD" _ || fail "the start-up poller did not start"
    t0="${EPOCHREALTIME/,/.}"
    "$TOOLGATE" serve --dev --listen "127.0.0.1:$REV_PORT" --db "$REV_DB" >>"$REV_LOG" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait "$poller" || rc=$?
    (( rc == 0 )) || { cat "$REV_LOG" >&2; fail "toolgate on $REV_DB did not come up"; }
    up="$(cat "$TMP/up.out")"
    STARTED_MS="$(awk -v a="$up" -v b="$t0" 'BEGIN {printf "%.0f", (a - b) * 1000}')"
}

# stop_daemon PID: SIGTERM, wait, insist on a clean exit.
stop_daemon() {
    local pid="$1" rc=0 p keep=()
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    (( rc == 0 )) || { cat "$REV_LOG" >&2; fail "toolgate (pid $pid) exited with status $rc on SIGTERM"; }
}

log "second toolgate on $REV: new database (schema, keys)"
start_timed
NEW_DB_MS="$STARTED_MS"
stop_daemon "$STARTED_PID"

ZERO_MS=(); ZERO_CPU=()
for (( i = 1; i <= STARTS; i++ )); do
    start_timed
    ZERO_MS+=("$STARTED_MS")
    ZERO_CPU+=("$(cpu_ms "$STARTED_PID")")
    ZERO_RSS_KB="$(mem "$STARTED_PID" VmRSS)"
    ZERO_HWM_KB="$(mem "$STARTED_PID" VmHWM)"
    log "start-up with 0 revocations, run $i: $STARTED_MS ms (CPU ${ZERO_CPU[-1]} ms), VmRSS $(mib "$ZERO_RSS_KB") MiB, VmHWM $(mib "$ZERO_HWM_KB") MiB"
    stop_daemon "$STARTED_PID"
done
ZERO_MEDIAN="$(median "${ZERO_MS[@]}")"
ZERO_CPU_MEDIAN="$(median "${ZERO_CPU[@]}")"

log "inserting $NREVOKED revocations into $REV_DB"
"${TG_PY[@]}" revoke-bulk "$REV_DB" "$NREVOKED" bench 2>"$TMP/revoke-bulk.err" \
    || { cat "$TMP/revoke-bulk.err" >&2; fail "bulk insert failed"; }
BULK_NOTE="$(cat "$TMP/revoke-bulk.err")"
log "$BULK_NOTE"
SCAN="$("${TG_PY[@]}" sql-scan "$REV_DB")" || fail "sql-scan failed"
read -r SCAN_MS SCAN_ROWS SCAN_C_MS <<<"$SCAN"
(( SCAN_ROWS >= NREVOKED )) || fail "sql-scan saw $SCAN_ROWS live revocations, wanted >= $NREVOKED"
log "SELECT_LIVE_KEYS in Python sqlite3: $SCAN_MS ms for $SCAN_ROWS rows row by row, $SCAN_C_MS ms inside SQLite"

REV_MS=(); REV_CPU=()
for (( i = 1; i <= STARTS; i++ )); do
    start_timed
    REV_MS+=("$STARTED_MS")
    REV_PID="$STARTED_PID"
    REV_CPU+=("$(cpu_ms "$REV_PID")")
    START_RSS_KB="$(mem "$REV_PID" VmRSS)"
    START_HWM_KB="$(mem "$REV_PID" VmHWM)"
    log "start-up with $NREVOKED revocations, run $i: $STARTED_MS ms (CPU ${REV_CPU[-1]} ms), VmRSS $(mib "$START_RSS_KB") MiB, VmHWM $(mib "$START_HWM_KB") MiB"
    # The last one stays up for the verify run.
    (( i == STARTS )) || stop_daemon "$REV_PID"
done
REV_MEDIAN="$(median "${REV_MS[@]}")"
REV_CPU_MEDIAN="$(median "${REV_CPU[@]}")"

"${TG_PY[@]}" register "$REV" code-search "$CS_RES"
# Exchange refuses a revoked subject: proof that the rows were loaded and are consulted.
"${TG_PY[@]}" exchange-expect "$REV" revoked-0 bench "$CS_RES" 403 access_denied
"${TG_PY[@]}" exchange-expect "$REV" "revoked-$(( NREVOKED - 1 ))" bench "$CS_RES" 403 access_denied
TG_URLS+=("$REV")

# The baseline for 7: a third toolgate, on a new database too. Not the first one: every verify
# appends to the audit log, and the first toolgate's log already holds a row per request of
# cases 2-5; here both sides start with the same (nearly empty) log.
BASE_PORT="$("${TG_PY[@]}" port)"
while [[ " $TG_PORT $BARE_PORT $REV_PORT " == *" $BASE_PORT "* ]]; do BASE_PORT="$("${TG_PY[@]}" port)"; done
BASE="http://127.0.0.1:$BASE_PORT"
log "third toolgate (no revocations) on $BASE"
"$TOOLGATE" serve --dev --listen "127.0.0.1:$BASE_PORT" --db "$TMP/base.db" >"$TMP/toolgate-base.log" 2>&1 &
BASE_PID=$!
PIDS+=("$BASE_PID")
"${TG_PY[@]}" wait "$BASE" /v1/sys/health 20 || { cat "$TMP/toolgate-base.log" >&2; fail "third toolgate did not come up"; }
"${TG_PY[@]}" register "$BASE" code-search "$CS_RES"
TG_URLS+=("$BASE")

# 6 and 7 back to back, same settings, so that their ratio carries as little drift as possible.
# Each token is minted right before its run (tokens live 300 s; a run can last 242 s).
TOKEN="$("${TG_PY[@]}" exchange "$BASE" bench-repeat-2 "$CS_RES")"
"${TG_PY[@]}" verify "$BASE" "$TOKEN" code-search 200
"${TG_PY[@]}" verify-body "$TOKEN" code-search "$TMP/verify-2.json"
ZERO_ROW=${#ROW_NAME[@]}
run_wrk "verify, repeated token, no revocations (200)" "$BASE/v1/mcp/verify" 200 "$BASE_PID" \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/verify-2.json"
REV_TOKEN="$("${TG_PY[@]}" exchange "$REV" bench-1m "$CS_RES")"
"${TG_PY[@]}" verify "$REV" "$REV_TOKEN" code-search 200
"${TG_PY[@]}" verify-body "$REV_TOKEN" code-search "$TMP/verify-1m.json"
REV_ROW=${#ROW_NAME[@]}
run_wrk "verify, repeated token, $(grouped "$NREVOKED") revocations loaded (200)" "$REV/v1/mcp/verify" 200 "$REV_PID" \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/verify-1m.json"

kill -0 "$REV_PID" 2>/dev/null || fail "toolgate with $NREVOKED revocations died during the run"
AFTER_RSS_KB="$(mem "$REV_PID" VmRSS)"
AFTER_HWM_KB="$(mem "$REV_PID" VmHWM)"

# --- report --------------------------------------------------------------------------------
RSS_MIB="$(awk -v k="$RSS_KB" 'BEGIN {printf "%.1f", k / 1024}')"
CPU="$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
CPU="${CPU:-unknown}"
NPROC="$(nproc)"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
BARE_RPS="${ROW_RPS[0]}"
REPEAT_ROW=1
DISTINCT_ROW=2

# wrk's latency (e.g. 950.12us, 3.03ms, 1.20s) in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); m = 1 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); m = 1000 }
        else if (v ~ /m$/) { sub(/m$/, "", v); m = 60000000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); m = 1000000 }
        else { exit 1 }
        printf "%.0f", v * m
    }'
}
join_by() { local sep="$1"; shift; local out="$1"; shift; local x; for x in "$@"; do out+="$sep$x"; done; echo "$out"; }
DISTINCT_US="$(to_us "${ROW_P50[$DISTINCT_ROW]}")" || fail "cannot parse p50 ${ROW_P50[$DISTINCT_ROW]}"
REPEAT_US="$(to_us "${ROW_P50[$REPEAT_ROW]}")" || fail "cannot parse p50 ${ROW_P50[$REPEAT_ROW]}"
ADDED_US=$(( DISTINCT_US - REPEAT_US ))
REV_RATIO="$(awk -v a="${ROW_RPS[$REV_ROW]}" -v b="${ROW_RPS[$ZERO_ROW]}" 'BEGIN {printf "%.2f", a / b}')"
REV_CPU_RATIO="$(awk -v a="${ROW_CPU[$REV_ROW]}" -v b="${ROW_CPU[$ZERO_ROW]}" 'BEGIN {printf "%.2f", a / b}')"
# Judged on the ratio as printed, so that the verdict never contradicts the figure.
REV_VERDICT="$(awk -v r="$REV_RATIO" 'BEGIN {print (r >= 0.9 && r <= 1.1) ? "PASS" : "FAIL"}')"
START_VERDICT="$( (( REV_MEDIAN < 2000 )) && echo PASS || echo FAIL )"
MEM_VERDICT="$( (( START_HWM_KB < 150 * 1024 && AFTER_HWM_KB < 150 * 1024 )) && echo PASS || echo FAIL )"

{
    printf '# toolgate benchmark\n\n'
    printf '%s · `nproc` = %s · CPU: %s · toolgate release build, `serve --dev`, fresh database\n\n' \
        "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$NPROC" "$CPU"
    printf 'Command: `wrk %s -s scripts/bench/bench.lua URL` per case, each after a %s s warm-up run (`bash scripts/bench.sh %s`). ' \
        "${WRK_ARGS[*]}" "$WARMUP" "$SECS"
    printf 'wrk and the servers share the same %s cores over loopback, so these figures are relative, not capacity numbers. ' "$NPROC"
    printf 'Every response status was checked (Lua `response()` callback). '
    printf 'Server CPU µs/response: user + system CPU time of the server process (all threads, audit writer included) during the measured run, divided by its responses; less disturbed than requests/s by other work on the machine. '
    printf 'Load average (1, 5, 15 min) before the first run: %s; after the last: %s.\n\n' "$LOAD_BEFORE" "$LOAD_AFTER"
    printf 'Distinct: every request pays one ES256 verification; the cache holds 4096 (`CACHE_CAPACITY` in src/verify.rs, emptied when full), and %s tokens cycled round-robin never hit it. ' "$NTOKENS"
    printf 'The last two rows ran back to back: the same case on two more toolgates, each on its own new database, one without revocations and one holding %s revoked subjects. ' "$(grouped "$NREVOKED")"
    printf 'Before every run the script waited for the audit queues of all toolgates to drain.\n\n'
    printf '| case | requests/s | p50 | p99 | ratio to bare | server CPU µs/response | ratio to no revocations |\n'
    printf '|---|---:|---:|---:|---:|---:|---|\n'
    for i in "${!ROW_NAME[@]}"; do
        ratio="$(awk -v a="${ROW_RPS[$i]}" -v b="$BARE_RPS" 'BEGIN {printf "%.2f", a / b}')"
        vs=""
        if (( i == REV_ROW )); then
            vs="requests/s $REV_RATIO (aim 0.90–1.10: $REV_VERDICT); CPU/response $REV_CPU_RATIO"
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${ROW_NAME[$i]}" "${ROW_RPS[$i]}" "${ROW_P50[$i]}" "${ROW_P99[$i]}" "$ratio" "${ROW_CPU[$i]}" "$vs"
    done
    printf '\nDistinct vs repeated token: added latency per request at p50: %s µs (p50 %s − %s); added server CPU per response: %s µs (%s − %s).\n' \
        "$ADDED_US" "${ROW_P50[$DISTINCT_ROW]}" "${ROW_P50[$REPEAT_ROW]}" \
        "$(( ROW_CPU[DISTINCT_ROW] - ROW_CPU[REPEAT_ROW] ))" "${ROW_CPU[$DISTINCT_ROW]}" "${ROW_CPU[$REPEAT_ROW]}"
    printf '\ntoolgate peak RSS (VmHWM at the end of the run, first toolgate, no revocations): %s MiB (%s kB)\n' "$RSS_MIB" "$RSS_KB"
    printf '\n## %s revocations\n\n' "$(grouped "$NREVOKED")"
    printf -- '- start-up with %s revocations: %s ms (median of %s: %s ms) — aim: < 2000 ms: %s; CPU time (user + system) used by then: %s ms (median; %s ms)\n' \
        "$(grouped "$NREVOKED")" "$REV_MEDIAN" "$STARTS" "$(join_by ', ' "${REV_MS[@]}")" "$START_VERDICT" \
        "$REV_CPU_MEDIAN" "$(join_by ', ' "${REV_CPU[@]}")"
    printf -- '- resident memory with %s revocations: VmRSS %s MiB, peak %s MiB after start-up; VmRSS %s MiB, peak %s MiB after the verify run — aim: < 150 MiB: %s\n' \
        "$(grouped "$NREVOKED")" "$(mib "$START_RSS_KB")" "$(mib "$START_HWM_KB")" "$(mib "$AFTER_RSS_KB")" "$(mib "$AFTER_HWM_KB")" "$MEM_VERDICT"
    printf -- '- for reference, same database before the bulk insert: start-up with 0 revocations %s ms (median of %s: %s ms; CPU %s ms), VmRSS %s MiB, peak %s MiB; first start on a new database (schema, keys): %s ms\n' \
        "$ZERO_MEDIAN" "$STARTS" "$(join_by ', ' "${ZERO_MS[@]}")" "$ZERO_CPU_MEDIAN" "$(mib "$ZERO_RSS_KB")" "$(mib "$ZERO_HWM_KB")" "$NEW_DB_MS"
    printf -- '- the start-up SELECT alone (`SELECT_LIVE_KEYS` of src/store/revocations.rs, Python sqlite3, warm page cache): %s ms for %s rows fetched row by row into Python; %s ms consumed inside SQLite by an aggregate over the same columns\n' \
        "$SCAN_MS" "$(grouped "$SCAN_ROWS")" "$SCAN_C_MS"
    printf -- '- exchange for the revoked subjects `wimse://dev.local/ns/bench/sa/revoked-0` and `…/revoked-%s`: 403 `access_denied`, as expected\n' "$(( NREVOKED - 1 ))"
    printf -- '- bulk insert (Python sqlite3, one transaction, not part of any figure above): %s\n' "${BULK_NOTE#inserted }"
} >"$RESULTS"

echo
cat "$RESULTS"
