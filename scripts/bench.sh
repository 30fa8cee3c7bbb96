#!/usr/bin/env bash
# Benchmark toolgate's hot paths against a bare hyper server, on loopback, with wrk.
#
#   bash scripts/bench.sh [seconds-per-run]      (default 10)
#
# Environment: SUSTAIN_SECS (the sustained run, default 60), SHORT_SECS (the audit, gateway,
# registration and signal cases, default min(seconds-per-run, 8)), AUDIT_ROUNDS (default 8).
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
# Auditing on vs off (SHORT_SECS each): two more toolgates on new databases, one started with a
# config file {"audit": false}, one with {"audit": true}; the repeated-token verify case on
# each, AUDIT_ROUNDS rounds (off then on in odd rounds, on then off in even ones); median
# requests/s of each and their ratio
# (aim >= 0.85, a measurement), and the audit rows written per second during each audit-on run
# (toolgate_audit_rows_written_total of GET /metrics before and right after wrk).
# Gateway vs direct (SHORT_SECS each): `toolgate gateway` in front of bare_hello (tool
# bench-tool of server bench-server, --route /hello=bench-tool), the first toolgate behind it:
#   GET /hello/x direct on bare_hello, then through the gateway with a bearer token (200);
#   POST /mcp with a JSON-RPC tools/call of bench-tool, direct, then through the gateway (200);
#   ratios gateway/direct with PASS/FAIL against >= 0.85 (a measurement).
# Registration and signals (SHORT_SECS each, 16 connections: every request is a durable write),
# on a fifth toolgate on a new database: POST /v1/tools with a unique tool per request (201);
# POST /v1/signals/events with a dev-mode SET, unique jti and subject per request (202).
# Sustained load (SUSTAIN_SECS): the other toolgates and the gateway are stopped; repeated-token
# verify on the first toolgate with the settings of case 2, its VmRSS sampled every 5 s; the
# RSS at the 10 s mark (after warm-up) against every later sample and the end: growth, PASS/FAIL
# against 10% (a measurement); any error fails the script, as everywhere.
# Every row records the peak RSS (VmHWM) of the process under test at the end of its case (the
# gateway for gateway rows, bare_hello for direct rows).
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
SUSTAIN_SECS="${SUSTAIN_SECS:-60}"
SHORT_SECS="${SHORT_SECS:-$(( SECS < 8 ? SECS : 8 ))}"
AUDIT_ROUNDS="${AUDIT_ROUNDS:-8}"
for v in SUSTAIN_SECS SHORT_SECS; do
    if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || (( ${!v} > 240 )); then
        echo "bench.sh: $v must be an integer in 1..240 (got '${!v}')" >&2
        exit 2
    fi
done
if ! [[ "$AUDIT_ROUNDS" =~ ^[1-9]$ ]]; then
    echo "bench.sh: AUDIT_ROUNDS must be an integer in 1..9 (got '$AUDIT_ROUNDS')" >&2
    exit 2
fi
THREADS=2
CONNS=64
WRITE_CONNS=16
SAMPLE_EVERY=5
WARM_MARK=10
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
# fmedian X...: the median of decimal numbers (the mean of the middle two for an even count).
fmedian() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# ratio A B: A / B to two decimals; verdict R MIN: PASS if R (as printed) >= MIN.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
verdict() { awk -v r="$1" -v m="$2" 'BEGIN {print (r >= m) ? "PASS" : "FAIL"}'; }
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
T_START="$SECONDS"

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

# take_port VAR: set VAR to a free loopback port not handed out before in this run.
USED_PORTS=" "
take_port() {
    local p
    p="$("${TG_PY[@]}" port)"
    while [[ "$USED_PORTS" == *" $p "* ]]; do p="$("${TG_PY[@]}" port)"; done
    USED_PORTS+="$p "
    printf -v "$1" '%s' "$p"
}
take_port TG_PORT
take_port BARE_PORT
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
ROW_NAME=(); ROW_RPS=(); ROW_P50=(); ROW_P99=(); ROW_CPU=(); ROW_HWM=(); ROW_RUN=(); ROW_NOTE=()
ROW_ALSO_CPU=()

# rss_sampler PID OUT: append "SECONDS KB" (VmRSS of PID) to OUT now and every $SAMPLE_EVERY s
# (on a fixed schedule from the start, not drifting), until killed (SIGTERM) or PID is gone.
rss_sampler() {
    local pid="$1" out="$2" t0="${EPOCHREALTIME/,/.}" k=0 kb d sleeper=""
    # A background subshell: it must not run the script's cleanup when it ends.
    trap - EXIT INT
    trap '[[ -n "$sleeper" ]] && kill "$sleeper" 2>/dev/null; exit 0' TERM
    while kb="$(awk '$1 == "VmRSS:" {print $2}' "/proc/$pid/status" 2>/dev/null)" && [[ -n "$kb" ]]; do
        echo "$(( k * SAMPLE_EVERY )) $kb" >>"$out"
        k=$(( k + 1 ))
        d="$(awk -v a="$t0" -v b="${EPOCHREALTIME/,/.}" -v t=$(( k * SAMPLE_EVERY )) \
            'BEGIN {d = a + t - b; printf "%.3f", (d > 0 ? d : 0)}')"
        sleep "$d" &
        sleeper=$!
        wait "$sleeper" || true
    done
}

# run_wrk [OPTIONS] NAME URL EXPECT SERVER_PID [VAR=VALUE...]: warm up, measure, check
# statuses, record a row, with the server's CPU time (user + system, all threads, its audit
# writer included) per response of the measured run (less disturbed than requests/s by other
# work on the machine) and its peak RSS (VmHWM) at the end of the case. Options:
#   --secs N             measured duration (default $SECS)
#   --conns N            wrk connections (default $CONNS)
#   --also PID           also record PID's CPU time per response (ROW_ALSO_CPU): the toolgate
#                        behind a gateway; waits 0.5 s after wrk for the last decision reports
#   --audit-metrics URL  read toolgate_audit_rows_written_total of URL before the measured run,
#                        right after it and once its queue has drained (LAST_ROWS_RUN,
#                        LAST_ROWS_DRAINED)
#   --sample-rss PID     sample PID's VmRSS every $SAMPLE_EVERY s during the measured run into
#                        $TMP/rss.samples; the sample taken right after wrk ends is LAST_END_RSS
# Sets LAST_ROW (the row's index) and LAST_RESPONSES.
run_wrk() {
    local secs="$SECS" conns="$CONNS" also="" metrics="" sample=""
    while [[ "$1" == --* ]]; do
        case "$1" in
            --secs) secs="$2" ;;
            --conns) conns="$2" ;;
            --also) also="$2" ;;
            --audit-metrics) metrics="$2" ;;
            --sample-rss) sample="$2" ;;
            *) fail "run_wrk: unknown option $1" ;;
        esac
        shift 2
    done
    local name="$1" url="$2" expect="$3" server="$4"
    shift 4
    local cpu0 cpu1 also0=0 also1=0 rows0=0 rows1=0 rows2=0 sampler=""
    local row=$(( ${#ROW_NAME[@]} ))
    local out="$TMP/wrk.$(( row + 1 )).out"
    local phase args
    for phase in warmup measure; do
        if [[ $phase == warmup ]]; then
            args=(-t"$THREADS" -c"$conns" -d"${WARMUP}s")
        else
            args=(-t"$THREADS" -c"$conns" -d"${secs}s" --latency)
        fi
        "${TG_PY[@]}" quiesce 120 "${TG_URLS[@]}" || fail "$name: audit queues did not drain ($phase)"
        if [[ $phase == measure && -n $metrics ]]; then
            rows0="$("${TG_PY[@]}" metric "$metrics" toolgate_audit_rows_written_total)" || fail "$name: no metrics"
        fi
        if [[ $phase == measure && -n $sample ]]; then
            : >"$TMP/rss.samples"
            rss_sampler "$sample" "$TMP/rss.samples" &
            sampler=$!
        fi
        log "$name ($phase): wrk ${args[*]} $url"
        cpu0="$(cpu_ms "$server")"
        [[ -z $also ]] || also0="$(cpu_ms "$also")"
        # BENCH_RUN keeps the unique bodies of the register and signal modes unique across runs.
        if ! env "$@" BENCH_EXPECT="$expect" BENCH_THREADS="$THREADS" BENCH_RUN="r$(( row + 1 ))$phase" \
            wrk "${args[@]}" -s "$LUA" "$url" >"$out" 2>&1; then
            cat "$out" >&2
            fail "$name: wrk failed ($phase)"
        fi
        if [[ -n $sampler ]]; then
            kill "$sampler" 2>/dev/null || true
            wait "$sampler" 2>/dev/null || true
            sampler=""
            LAST_END_RSS="$(mem "$sample" VmRSS)"
        fi
        if [[ $phase == measure && -n $metrics ]]; then
            rows1="$("${TG_PY[@]}" metric "$metrics" toolgate_audit_rows_written_total)" || fail "$name: no metrics"
        fi
        [[ -z $also ]] || sleep 0.5
        # The records of this run are written (and their CPU counted) before the next starts.
        "${TG_PY[@]}" quiesce 120 "${TG_URLS[@]}" || fail "$name: audit queues did not drain ($phase)"
        if [[ $phase == measure && -n $metrics ]]; then
            rows2="$("${TG_PY[@]}" metric "$metrics" toolgate_audit_rows_written_total)" || fail "$name: no metrics"
        fi
        cpu1="$(cpu_ms "$server")"
        [[ -z $also ]] || also1="$(cpu_ms "$also")"
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
    ROW_ALSO_CPU+=("$( [[ -z $also ]] || awk -v c=$(( also1 - also0 )) -v n="$responses" 'BEGIN {printf "%.0f", c * 1000 / n}')")
    ROW_P50+=("$p50")
    ROW_P99+=("$p99")
    ROW_HWM+=("$(mem "$server" VmHWM)")
    ROW_RUN+=("-c$conns ${secs} s")
    ROW_NOTE+=("")
    LAST_ROW="$row"
    LAST_RESPONSES="$responses"
    LAST_ROWS_RUN=$(( rows1 - rows0 ))
    LAST_ROWS_DRAINED=$(( rows2 - rows0 ))
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
take_port REV_PORT
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

# stop_daemon PID [LOG]: SIGTERM, wait, insist on a clean exit.
stop_daemon() {
    local pid="$1" log="${2:-$REV_LOG}" rc=0 p keep=()
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    (( rc == 0 )) || { cat "$log" >&2; fail "pid $pid ($log) exited with status $rc on SIGTERM"; }
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
take_port BASE_PORT
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

# start_tg PORT DB LOG [ARG...]: launch a dev toolgate on a new database, wait until it is up;
# sets STARTED_PID.
start_tg() {
    local port="$1" db="$2" logf="$3"
    shift 3
    "$TOOLGATE" serve --dev --listen "127.0.0.1:$port" --db "$db" "$@" >"$logf" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    "${TG_PY[@]}" wait "http://127.0.0.1:$port" /v1/sys/health 20 \
        || { cat "$logf" >&2; fail "toolgate on port $port did not come up"; }
}
# drop_url URL: stop waiting for URL's audit queue (its toolgate is about to stop).
drop_url() {
    local u keep=()
    for u in "${TG_URLS[@]}"; do [[ "$u" == "$1" ]] || keep+=("$u"); done
    TG_URLS=("${keep[@]}")
}

# --- auditing on vs off --------------------------------------------------------------------
take_port AOFF_PORT
take_port AON_PORT
AOFF="http://127.0.0.1:$AOFF_PORT"
AON="http://127.0.0.1:$AON_PORT"
printf '{"audit": false}\n' >"$TMP/audit-off.json"
printf '{"audit": true}\n' >"$TMP/audit-on.json"
log "auditing off: toolgate on $AOFF (--config {\"audit\": false}); auditing on: toolgate on $AON"
start_tg "$AOFF_PORT" "$TMP/audit-off.db" "$TMP/toolgate-audit-off.log" --config "$TMP/audit-off.json"
AOFF_PID="$STARTED_PID"
start_tg "$AON_PORT" "$TMP/audit-on.db" "$TMP/toolgate-audit-on.log" --config "$TMP/audit-on.json"
AON_PID="$STARTED_PID"
"${TG_PY[@]}" register "$AOFF" code-search "$CS_RES"
"${TG_PY[@]}" register "$AON" code-search "$CS_RES"
TG_URLS+=("$AOFF" "$AON")

AOFF_RPS=(); AON_RPS=(); AON_ROWS_PS=(); AON_ROWS_PER_RESP=(); AOFF_ROWS=()
for (( r = 1; r <= AUDIT_ROUNDS; r++ )); do
    # off, on in odd rounds, on, off in even ones: a drift of the machine's speed during the
    # rounds does not favour either side.
    if (( r % 2 )); then sides=(off on); else sides=(on off); fi
    for side in "${sides[@]}"; do
        if [[ $side == off ]]; then url="$AOFF"; pid="$AOFF_PID"; else url="$AON"; pid="$AON_PID"; fi
        tok="$("${TG_PY[@]}" exchange "$url" "bench-audit-$side-$r" "$CS_RES")"
        "${TG_PY[@]}" verify "$url" "$tok" code-search 200
        "${TG_PY[@]}" verify-body "$tok" code-search "$TMP/verify-audit-$side.json"
        run_wrk --secs "$SHORT_SECS" --audit-metrics "$url" \
            "verify, repeated token, audit $side, round $r (200)" "$url/v1/mcp/verify" 200 "$pid" \
            BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/verify-audit-$side.json"
        if [[ $side == off ]]; then
            AOFF_RPS+=("${ROW_RPS[$LAST_ROW]}")
            AOFF_ROWS+=("$LAST_ROWS_DRAINED")
            off_row="$LAST_ROW"
            log "audit off, round $r: toolgate_audit_rows_written_total +$LAST_ROWS_DRAINED during the run"
        else
            rows_ps="$(awk -v n="$LAST_ROWS_RUN" -v s="$SHORT_SECS" 'BEGIN {printf "%.0f", n / s}')"
            AON_RPS+=("${ROW_RPS[$LAST_ROW]}")
            AON_ROWS_PS+=("$rows_ps")
            AON_ROWS_PER_RESP+=("$(ratio "$LAST_ROWS_DRAINED" "$LAST_RESPONSES")")
            on_row="$LAST_ROW"
            log "audit on, round $r: $LAST_ROWS_RUN audit rows written during the ${SHORT_SECS} s run ($rows_ps/s), $LAST_ROWS_DRAINED once drained, for $LAST_RESPONSES responses"
        fi
    done
    ROW_NOTE[$on_row]="÷ audit off, round $r: $(ratio "${ROW_RPS[$on_row]}" "${ROW_RPS[$off_row]}"); audit rows written: $rows_ps/s"
done
AOFF_MED="$(fmedian "${AOFF_RPS[@]}")"
AON_MED="$(fmedian "${AON_RPS[@]}")"
AUDIT_RATIO="$(ratio "$AON_MED" "$AOFF_MED")"
AUDIT_VERDICT="$(verdict "$AUDIT_RATIO" 0.85)"
AON_ROWS_PS_MED="$(fmedian "${AON_ROWS_PS[@]}")"
AUDIT_OFF_HWM_KB="$(mem "$AOFF_PID" VmHWM)"
# With auditing off records are discarded uncounted (src/audit.rs); the audit_log tables
# show what was written.
AOFF_DB_ROWS="$("${TG_PY[@]}" db-count "$TMP/audit-off.db" audit_log)" || fail "cannot count audit rows"
AON_DB_ROWS="$("${TG_PY[@]}" db-count "$TMP/audit-on.db" audit_log)" || fail "cannot count audit rows"
AUDIT_ON_HWM_KB="$(mem "$AON_PID" VmHWM)"
drop_url "$AOFF"
drop_url "$AON"
stop_daemon "$AOFF_PID" "$TMP/toolgate-audit-off.log"
stop_daemon "$AON_PID" "$TMP/toolgate-audit-on.log"

# --- gateway vs direct ---------------------------------------------------------------------
# bare_hello is the upstream; the first toolgate (idle since case 5) is the gateway's toolgate.
GW_RES="https://bench.example.com/mcp"
GW_TOOL_RES="$GW_RES/bench-tool"
"${TG_PY[@]}" register "$TG" bench-tool "$GW_TOOL_RES" bench-server
take_port GW_PORT
GW="http://127.0.0.1:$GW_PORT"
GW_LOG="$TMP/gateway.log"
log "gateway on $GW -> $BARE_URL (toolgate $TG)"
"$TOOLGATE" gateway --toolgate "$TG" --listen "127.0.0.1:$GW_PORT" --upstream "$BARE_URL" \
    --server-id bench-server --resource "$GW_RES" --route /hello=bench-tool >"$GW_LOG" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
"${TG_PY[@]}" wait "$GW" /.well-known/oauth-protected-resource 20 || { cat "$GW_LOG" >&2; fail "the gateway did not come up"; }
GW_TOKEN="$("${TG_PY[@]}" exchange "$TG" bench-gateway "$GW_TOOL_RES")"
printf '%s' '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"bench-tool","arguments":{}}}' >"$TMP/mcp-call.json"
# The gateway guards (no token: 401) and passes both shapes with the token; bare_hello answers.
"${TG_PY[@]}" request "$GW" GET /hello/x 401
"${TG_PY[@]}" request "$GW" POST /mcp 401 "" "$TMP/mcp-call.json"
"${TG_PY[@]}" request "$GW" GET /hello/x 200 "$GW_TOKEN"
"${TG_PY[@]}" request "$GW" POST /mcp 200 "$GW_TOKEN" "$TMP/mcp-call.json"
"${TG_PY[@]}" request "$BARE_URL" POST /mcp 200 "" "$TMP/mcp-call.json"

run_wrk --secs "$SHORT_SECS" "direct: bare_hello GET /hello/x (200)" "$BARE_URL/hello/x" 200 "$BARE_PID"
DGET_ROW="$LAST_ROW"
run_wrk --secs "$SHORT_SECS" --also "$TG_PID" --audit-metrics "$TG" \
    "gateway: GET /hello/x, bearer token -> bare_hello (200)" "$GW/hello/x" 200 "$GW_PID" \
    BENCH_BEARER="$GW_TOKEN"
GGET_ROW="$LAST_ROW"
GGET_REPORTED="$LAST_ROWS_DRAINED"
GGET_RESPONSES="$LAST_RESPONSES"
run_wrk --secs "$SHORT_SECS" "direct: bare_hello POST /mcp tools/call (200)" "$BARE_URL/mcp" 200 "$BARE_PID" \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/mcp-call.json"
DPOST_ROW="$LAST_ROW"
run_wrk --secs "$SHORT_SECS" --also "$TG_PID" --audit-metrics "$TG" \
    "gateway: POST /mcp tools/call bench-tool, bearer token -> bare_hello (200)" "$GW/mcp" 200 "$GW_PID" \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/mcp-call.json" BENCH_BEARER="$GW_TOKEN"
GPOST_ROW="$LAST_ROW"
GPOST_REPORTED="$LAST_ROWS_DRAINED"
GPOST_RESPONSES="$LAST_RESPONSES"
GGET_RATIO="$(ratio "${ROW_RPS[$GGET_ROW]}" "${ROW_RPS[$DGET_ROW]}")"
GPOST_RATIO="$(ratio "${ROW_RPS[$GPOST_ROW]}" "${ROW_RPS[$DPOST_ROW]}")"
GGET_VERDICT="$(verdict "$GGET_RATIO" 0.85)"
GPOST_VERDICT="$(verdict "$GPOST_RATIO" 0.85)"
ROW_NOTE[$GGET_ROW]="÷ direct GET: $GGET_RATIO (aim ≥ 0.85: $GGET_VERDICT); toolgate CPU ${ROW_ALSO_CPU[$GGET_ROW]} µs/response"
ROW_NOTE[$GPOST_ROW]="÷ direct POST: $GPOST_RATIO (aim ≥ 0.85: $GPOST_VERDICT); toolgate CPU ${ROW_ALSO_CPU[$GPOST_ROW]} µs/response"
GW_WARNINGS="$(grep -cE ' (WARN|ERROR) ' "$GW_LOG" || true)"
stop_daemon "$GW_PID" "$GW_LOG"

# --- registration and signals --------------------------------------------------------------
take_port WR_PORT
WR="http://127.0.0.1:$WR_PORT"
WR_LOG="$TMP/toolgate-writes.log"
log "writes: toolgate on $WR"
start_tg "$WR_PORT" "$TMP/writes.db" "$WR_LOG"
WR_PID="$STARTED_PID"
TG_URLS+=("$WR")
run_wrk --secs "$SHORT_SECS" --conns "$WRITE_CONNS" \
    "register a tool, POST /v1/tools, unique per request (201)" "$WR/v1/tools" 201 "$WR_PID" \
    BENCH_MODE=register
REG_ROW="$LAST_ROW"
run_wrk --secs "$SHORT_SECS" --conns "$WRITE_CONNS" \
    "signal, POST /v1/signals/events, dev SET, unique jti and subject (202)" "$WR/v1/signals/events" 202 "$WR_PID" \
    BENCH_MODE=signal
SIG_ROW="$LAST_ROW"

# --- sustained load ------------------------------------------------------------------------
log "stopping the other toolgates before the sustained run"
drop_url "$WR"
drop_url "$BASE"
drop_url "$REV"
stop_daemon "$WR_PID" "$WR_LOG"
stop_daemon "$BASE_PID" "$TMP/toolgate-base.log"
stop_daemon "$REV_PID" "$REV_LOG"
[[ "${TG_URLS[*]}" == "$TG" ]] || fail "toolgates still listed: ${TG_URLS[*]}"
# A fresh token: tokens live 300 s.
TOKEN="$("${TG_PY[@]}" exchange "$TG" bench-sustain "$CS_RES")"
"${TG_PY[@]}" verify "$TG" "$TOKEN" code-search 200
"${TG_PY[@]}" verify-body "$TOKEN" code-search "$TMP/verify-sustain.json"
run_wrk --secs "$SUSTAIN_SECS" --sample-rss "$TG_PID" \
    "sustained: verify, repeated token, ${SUSTAIN_SECS} s (200)" "$TG/v1/mcp/verify" 200 "$TG_PID" \
    BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/verify-sustain.json"
SUS_ROW="$LAST_ROW"
SUS_RESPONSES="$LAST_RESPONSES"
SUS_END_KB="$LAST_END_RSS"
# The figures are read from the sample file: "SECONDS KB" per line.
SAMPLES="$TMP/rss.samples"
[[ -s "$SAMPLES" ]] || fail "no RSS samples"
read -r SUS_BASE_T SUS_BASE_KB < <(awk -v m="$WARM_MARK" '$1 >= m {print; exit}' "$SAMPLES") || true
SUS_BASE_NOTE=""
if [[ -z "${SUS_BASE_KB:-}" ]]; then
    read -r SUS_BASE_T SUS_BASE_KB < <(tail -n 1 "$SAMPLES")
    SUS_BASE_NOTE=" (the run is shorter than the ${WARM_MARK} s mark: its last sample is the baseline)"
fi
SUS_MAX_KB="$(awk -v t="$SUS_BASE_T" -v e="$SUS_END_KB" 'BEGIN {m = e} $1 >= t && $2 > m {m = $2} END {print m}' "$SAMPLES")"
SUS_GROWTH_END="$(awk -v a="$SUS_END_KB" -v b="$SUS_BASE_KB" 'BEGIN {printf "%+.1f", (a - b) * 100 / b}')"
SUS_GROWTH_MAX="$(awk -v a="$SUS_MAX_KB" -v b="$SUS_BASE_KB" 'BEGIN {printf "%+.1f", (a - b) * 100 / b}')"
SUS_VERDICT="$(awk -v g="$SUS_GROWTH_MAX" 'BEGIN {print (g <= 10) ? "PASS" : "FAIL"}')"
SUS_TIMELINE="$(awk '{printf "%s%s s %.1f", (NR > 1 ? ", " : ""), $1, $2 / 1024}' "$SAMPLES")"
SUS_VS_CASE2="$(ratio "${ROW_RPS[$SUS_ROW]}" "${ROW_RPS[1]}")"
ROW_NOTE[$SUS_ROW]="errors 0; RSS ${SUS_GROWTH_MAX}% max after ${SUS_BASE_T} s (aim ≤ +10%: $SUS_VERDICT); ÷ case 2: $SUS_VS_CASE2"
kill -0 "$TG_PID" 2>/dev/null || fail "toolgate died during the sustained run"
BENCH_WALL=$(( SECONDS - T_START ))

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

ROW_NOTE[$REV_ROW]="÷ no revocations: requests/s $REV_RATIO (aim 0.90–1.10: $REV_VERDICT); CPU/response $REV_CPU_RATIO"

{
    printf '# toolgate benchmark\n\n'
    printf '%s · `nproc` = %s · CPU: %s · toolgate release build, `serve --dev`, fresh database\n\n' \
        "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$NPROC" "$CPU"
    printf 'Command: `wrk %s -s scripts/bench/bench.lua URL` per case, each after a %s s warm-up run (`bash scripts/bench.sh %s`; SUSTAIN_SECS=%s, SHORT_SECS=%s, AUDIT_ROUNDS=%s). ' \
        "${WRK_ARGS[*]}" "$WARMUP" "$SECS" "$SUSTAIN_SECS" "$SHORT_SECS" "$AUDIT_ROUNDS"
    printf 'The audit, gateway and direct cases run %s s (`-d%ss`), the registration and signal cases %s s with `-c%s`, the sustained case %s s; the column "wrk" gives each row'"'"'s connections and duration. ' \
        "$SHORT_SECS" "$SHORT_SECS" "$SHORT_SECS" "$WRITE_CONNS" "$SUSTAIN_SECS"
    printf 'wrk and the servers share the same %s cores over loopback, so these figures are relative, not capacity numbers. ' "$NPROC"
    printf 'Every response status was checked (Lua `response()` callback). '
    printf 'Server CPU µs/response: user + system CPU time of the server process (all threads, audit writer included) during the measured run, divided by its responses; less disturbed than requests/s by other work on the machine. '
    printf 'Peak RSS: VmHWM of the process under test at the end of its case (toolgate for toolgate rows, the gateway process for gateway rows, bare_hello for bare and direct rows; a peak since that process started). '
    printf 'Load average (1, 5, 15 min) before the first run: %s; after the last: %s. ' "$LOAD_BEFORE" "$LOAD_AFTER"
    printf 'The machine is shared with other work (other sessions'"'"' builds), which the load averages above reflect on %s cores: absolute rates, and ratios between rows measured minutes apart, carry that noise; the rows compared with each other ran back to back. ' "$NPROC"
    printf 'Wall time of the measurements (build excluded): %s s.\n\n' "$BENCH_WALL"
    printf 'Distinct: every request pays one ES256 verification; the cache holds 4096 (`CACHE_CAPACITY` in src/verify.rs, emptied when full), and %s tokens cycled round-robin never hit it. ' "$NTOKENS"
    printf 'The rows "no revocations" and "revocations loaded" ran back to back: the same case on two more toolgates, each on its own new database, one without revocations and one holding %s revoked subjects. ' "$(grouped "$NREVOKED")"
    printf 'Before every run the script waited for the audit queues of all toolgates to drain.\n\n'
    printf '| case | wrk | requests/s | p50 | p99 | ratio to bare | peak RSS | server CPU µs/response | compared with |\n'
    printf '|---|---|---:|---:|---:|---:|---:|---:|---|\n'
    for i in "${!ROW_NAME[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s | %s MiB | %s | %s |\n' "${ROW_NAME[$i]}" "${ROW_RUN[$i]}" "${ROW_RPS[$i]}" \
            "${ROW_P50[$i]}" "${ROW_P99[$i]}" "$(ratio "${ROW_RPS[$i]}" "$BARE_RPS")" "$(mib "${ROW_HWM[$i]}")" \
            "${ROW_CPU[$i]}" "${ROW_NOTE[$i]}"
    done
    printf '\nDistinct vs repeated token: added latency per request at p50: %s µs (p50 %s − %s); added server CPU per response: %s µs (%s − %s).\n' \
        "$ADDED_US" "${ROW_P50[$DISTINCT_ROW]}" "${ROW_P50[$REPEAT_ROW]}" \
        "$(( ROW_CPU[DISTINCT_ROW] - ROW_CPU[REPEAT_ROW] ))" "${ROW_CPU[$DISTINCT_ROW]}" "${ROW_CPU[$REPEAT_ROW]}"
    printf '\ntoolgate peak RSS (VmHWM at the end of case 5, first toolgate, no revocations): %s MiB (%s kB)\n' "$RSS_MIB" "$RSS_KB"

    printf '\n## Auditing on vs off\n\n'
    printf -- '- verify, repeated token, on two toolgates started side by side on new databases, one with a config file `{"audit": false}`, one with `{"audit": true}`; %s rounds of %s s runs, off then on in odd rounds, on then off in even ones\n' "$AUDIT_ROUNDS" "$SHORT_SECS"
    printf -- '- audit off: %s requests/s (median of %s); audit on: %s requests/s (median of %s)\n' \
        "$AOFF_MED" "$(join_by ', ' "${AOFF_RPS[@]}")" "$AON_MED" "$(join_by ', ' "${AON_RPS[@]}")"
    printf -- '- ratio on/off: %s — aim ≥ 0.85: %s\n' "$AUDIT_RATIO" "$AUDIT_VERDICT"
    printf -- '- audit rows written per second during the audit-on runs: %s (median; %s), from `toolgate_audit_rows_written_total` (GET /metrics) before and right after wrk, divided by %s s; once the queue had drained, %s rows per response (per run)\n' \
        "$AON_ROWS_PS_MED" "$(join_by ', ' "${AON_ROWS_PS[@]}")" "$SHORT_SECS" "$(join_by ', ' "${AON_ROWS_PER_RESP[@]}")"
    printf -- '- audit-off toolgate: rows in its database'"'"'s `audit_log` table after all its runs: %s (audit-on database: %s); its `toolgate_audit_rows_written_total` rose by %s during its runs (with auditing off, src/audit.rs discards each record without counting it)\n' \
        "$AOFF_DB_ROWS" "$AON_DB_ROWS" "$(join_by ', ' "${AOFF_ROWS[@]}")"
    printf -- '- peak RSS at the end: audit off %s MiB, audit on %s MiB\n' "$(mib "$AUDIT_OFF_HWM_KB")" "$(mib "$AUDIT_ON_HWM_KB")"

    printf '\n## Gateway vs direct\n\n'
    printf -- '- `toolgate gateway --toolgate <first toolgate> --upstream <bare_hello> --server-id bench-server --resource %s --route /hello=bench-tool`; tool `bench-tool` (resource `%s`) registered with server_id `bench-server`; one token for that resource, sent as `Authorization: Bearer`\n' "$GW_RES" "$GW_TOOL_RES"
    printf -- '- GET /hello/x: gateway %s requests/s, direct %s: ratio %s — aim ≥ 0.85: %s\n' \
        "${ROW_RPS[$GGET_ROW]}" "${ROW_RPS[$DGET_ROW]}" "$GGET_RATIO" "$GGET_VERDICT"
    printf -- '- POST /mcp, JSON-RPC `tools/call` of bench-tool: gateway %s requests/s, direct %s: ratio %s — aim ≥ 0.85: %s\n' \
        "${ROW_RPS[$GPOST_ROW]}" "${ROW_RPS[$DPOST_ROW]}" "$GPOST_RATIO" "$GPOST_VERDICT"
    printf -- '- each direct row ran right before its gateway row. Through the gateway, each request is decided in the gateway process (token verified against cached keys, tool and revocations polled from toolgate) and proxied to bare_hello over a pooled keep-alive connection: bare_hello, the gateway and wrk share the same %s cores\n' "$NPROC"
    printf -- '- the gateway reports every decision to toolgate in batches (POST /v1/mcp/decisions, up to 500 a batch), and toolgate writes each to its audit log: that costs the daemon CPU on the same %s cores during the gateway runs — %s µs/response (GET) and %s µs/response (POST) of toolgate CPU on top of the gateway'"'"'s own %s and %s; toolgate audit rows written per gateway response: %s (GET), %s (POST)\n' \
        "$NPROC" "${ROW_ALSO_CPU[$GGET_ROW]}" "${ROW_ALSO_CPU[$GPOST_ROW]}" "${ROW_CPU[$GGET_ROW]}" "${ROW_CPU[$GPOST_ROW]}" \
        "$(ratio "$GGET_REPORTED" "$GGET_RESPONSES")" "$(ratio "$GPOST_REPORTED" "$GPOST_RESPONSES")"
    printf -- '- checked before the runs: without a token the gateway answers 401 to both; with it, 200; warnings or errors in the gateway log: %s\n' "$GW_WARNINGS"

    printf '\n## Registration and signals\n\n'
    printf -- '- a fifth toolgate on a new database; %s connections (each request is a durable, fsync'"'"'d write acknowledged once its audit row is committed), %s s each\n' "$WRITE_CONNS" "$SHORT_SECS"
    printf -- '- POST /v1/tools, a new tool per request (`bench-<run>-<thread>-<n>`, resource `https://bench.example.com/t/<run>-<thread>-<n>`), all 201: %s requests/s, p50 %s, p99 %s\n' \
        "${ROW_RPS[$REG_ROW]}" "${ROW_P50[$REG_ROW]}" "${ROW_P99[$REG_ROW]}"
    printf -- '- POST /v1/signals/events, a dev-mode session-revoked SET per request with its own jti and subject, all 202: %s requests/s, p50 %s, p99 %s\n' \
        "${ROW_RPS[$SIG_ROW]}" "${ROW_P50[$SIG_ROW]}" "${ROW_P99[$SIG_ROW]}"

    printf '\n## Sustained load\n\n'
    printf -- '- %s s of verify, repeated token (fresh token), `wrk -t%s -c%s -d%ss`, on the first toolgate after the other toolgates and the gateway were stopped: %s requests/s (%s of case 2), p50 %s, p99 %s, %s responses\n' \
        "$SUSTAIN_SECS" "$THREADS" "$CONNS" "$SUSTAIN_SECS" "${ROW_RPS[$SUS_ROW]}" "$SUS_VS_CASE2" "${ROW_P50[$SUS_ROW]}" "${ROW_P99[$SUS_ROW]}" "$SUS_RESPONSES"
    printf -- '- errors: 0 (every status 200; no socket errors or timeouts — any would have failed the script)\n'
    printf -- '- toolgate VmRSS at %s s (after warm-up)%s: %s MiB; at the end: %s MiB (%s%%); highest from %s s to the end: %s MiB (%s%%) — aim: no growth beyond 10%% after warm-up: %s\n' \
        "$SUS_BASE_T" "$SUS_BASE_NOTE" "$(mib "$SUS_BASE_KB")" "$(mib "$SUS_END_KB")" "$SUS_GROWTH_END" "$SUS_BASE_T" "$(mib "$SUS_MAX_KB")" "$SUS_GROWTH_MAX" "$SUS_VERDICT"
    printf -- '- VmRSS every %s s from the start of the measured run (MiB): %s; end: %.1f\n' "$SAMPLE_EVERY" "$SUS_TIMELINE" "$(awk -v k="$SUS_END_KB" 'BEGIN {print k / 1024}')"

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
