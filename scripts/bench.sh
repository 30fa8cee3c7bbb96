#!/usr/bin/env bash
# End-to-end benchmark: toolgate over HTTP beside a bare hyper server, the old and the new
# binary side by side in one run, driven by wrk on loopback. The micro-benchmarks (pipeline,
# revocation index and load, audit append) are `cargo bench --bench micro` (scripts/bench/micro.rs).
#
#   bash scripts/bench.sh [seconds-per-run]      (default 10)
#
# Environment:
#   BASELINE  git revision of the old toolgate. Default: the merge-base of HEAD and main (what
#             this branch started from); on main itself, HEAD~1. Its release binary is built in
#             a temporary `git worktree` with its own target directory, both removed once the
#             binary is copied out. BASELINE=none: the new binary only.
#   OLD_BIN   a prebuilt old toolgate binary to use instead of building BASELINE
#   ROUNDS    rounds (default 3). Every toolgate case runs on old and new in every round, old
#             first in odd rounds and new first in even ones; the table gives the medians.
#   WARMUP    seconds of unmeasured wrk load before each measured run (default 2)
#   ES256_NS  one ES256 verification in ns; default: measured with criterion
#             (`cargo bench --bench micro -- --exact jose/es256_verify`)
#
# The new binary is this work tree's (`cargo build --release`). Cases, each
# `wrk -t2 -c64 -d<seconds>s --latency -s scripts/bench/bench.lua`:
#   bare hyper GET / (bare_hello, the ceiling) · verify, one token repeated (200) · verify,
#   20000 distinct tokens (200; the signature cache holds 4096, so each call pays one ES256
#   check) · exchange, dev stub (200) · verify denial, wrong audience (403) · GET /hello/x and
#   POST /mcp tools/call on bare_hello directly and through `toolgate gateway` (200).
# TLS cases (new binary only; the certificates come from `toolgate dev-certs`): verify, one
# token repeated, over TLS with keep-alive (beside the same over plain HTTP: aim ≥ 0.8×) · POST
# /mcp tools/call through a gateway that listens with TLS · full and resumed TLS handshakes per
# second (`openssl s_time -new`, TLS 1.3 / `-reuse -tls1_2`, no request sent) with the server CPU
# per handshake.
# DPoP cases (new binary only; a daemon whose tools take DPoP-bound tokens only, `--dpop-window
# 300`, and a gateway with `--dpop-nonce`): verify of a DPoP-bound token with a new proof each
# request, and POST /mcp tools/call through the gateway likewise (aim: the proof costs at most
# 1.5 × one ES256 verification of server CPU beyond the same call with a bearer token). The
# proofs come from `toolgate dpop proof --count`, made right before each run, one file for the
# warm-up and one for the measured run, each proof used once.
# Key rotation under load (new binary only, once, after the rounds; not timed against a
# baseline): a daemon with `--publish-ahead 4` and a gateway with `--key-refresh 1`; three
# segments of load, each `wrk -t1 -c16` on POST /mcp tools/call through the gateway, verify at
# the daemon and exchange at the daemon at once, each gateway and verify request with the next
# of every token minted so far. `toolgate keys rotate` runs one second into the first and the
# second segment; each next segment starts once the new key signs, with tokens it signed added
# (the gateway sees its kid first under load). Every response must be 200: zero non-2xx, and
# tokens minted before each rotation keep verifying (they live 300 s, the case ~20 s).
# Tokens are minted right before the run that uses them (they live 300 s). Each row gets
# requests/s, p50, p99 and the server's CPU time per response (user + system of the server
# process from /proc/PID/stat; gateway rows add the toolgate that the gateway reports its
# decisions to). The audit queues of both toolgates are drained before every wrk run and
# before the CPU time is read. Any unexpected status, socket error or wrk failure fails the
# script; the aims are printed (PASS/FAIL) and never fail it. Results: scripts/bench/results.md.
set -euo pipefail

SECS="${1:-10}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-2}"
check_int() {
    [[ "$2" =~ ^[1-9][0-9]*$ ]] && (( $2 <= $3 )) && return 0
    echo "bench.sh: $1 must be an integer in 1..$3 (got '$2')" >&2
    exit 2
}
# Tokens live 300 s: a warm-up and a run stay well inside that.
check_int seconds-per-run "$SECS" 240
check_int ROUNDS "$ROUNDS" 9
check_int WARMUP "$WARMUP" 10
THREADS=2
CONNS=64
NTOKENS=20000

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LUA="$ROOT/scripts/bench/bench.lua"
RESULTS="$ROOT/scripts/bench/results.md"
cd "$ROOT"

log() { printf '== %s\n' "$*" >&2; }
fail() { printf 'bench.sh: FAIL: %s\n' "$*" >&2; exit 1; }

# --- integer arithmetic (bash has no floats) -------------------------------------------------
# milli X: the decimal X in thousandths ("2.23" -> 2230).
milli() {
    [[ "$1" =~ ^([0-9]+)(\.([0-9]*))?$ ]] || fail "not a number: '$1'"
    local frac="${BASH_REMATCH[3]}000"
    echo $(( 10#${BASH_REMATCH[1]} * 1000 + 10#${frac:0:3} ))
}
# ratio A B: A / B to two decimals, rounded.
ratio() {
    local h=$(( (200 * $1 + $2) / (2 * $2) ))
    printf '%d.%02d' $(( h / 100 )) $(( h % 100 ))
}
# hundredths R: "0.93" -> 93.
hundredths() { echo $(( 10#${1%.*} * 100 + 10#${1#*.} )); }
# median N...: of integers; the mean of the middle two for an even count.
median() {
    local sorted
    mapfile -t sorted < <(printf '%s\n' "$@" | sort -n)
    local n=${#sorted[@]}
    if (( n % 2 )); then echo "${sorted[n / 2]}"; else echo $(( (sorted[n / 2 - 1] + sorted[n / 2]) / 2 )); fi
}
# to_us V: wrk's latency ("671.00us", "2.23ms", "1.20s") in µs.
to_us() {
    [[ "$1" =~ ^([0-9.]+)(us|ms|s)$ ]] || fail "cannot read the latency '$1'"
    local m
    m="$(milli "${BASH_REMATCH[1]}")"
    case "${BASH_REMATCH[2]}" in
        us) echo $(( (m + 500) / 1000 )) ;;
        ms) echo "$m" ;;
        s) echo $(( m * 1000 )) ;;
    esac
}
CLK_TCK="$(getconf CLK_TCK)"
# cpu_ms PID...: user + system CPU time the processes have used so far, in ms (one clock tick
# resolution). Fields 14 and 15 of /proc/PID/stat, counted after the command name.
cpu_ms() {
    local pid stat ticks=0
    local -a f
    for pid in "$@"; do
        stat="$(<"/proc/$pid/stat")" || fail "cannot read /proc/$pid/stat"
        read -r -a f <<<"${stat##*) }"
        ticks=$(( ticks + f[11] + f[12] ))
    done
    echo $(( ticks * 1000 / CLK_TCK ))
}

# --- tools and builds --------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && apt-get install -y -qq wrk
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq wrk
    fi
fi
for tool in wrk curl git base64 openssl; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not available"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/toolgate-bench.XXXXXX")"
CERTS="$TMP/certs"
PIDS=()
WORKTREE=""
cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do { wait "$p" || true; } 2>/dev/null; done
    if [[ -n $WORKTREE ]]; then
        git worktree remove --force "$WORKTREE" 2>/dev/null || true
        git worktree prune 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building the new binary (release)"
cargo build --release --bin toolgate --example bare_hello
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$(cargo metadata --format-version 1 --no-deps 2>/dev/null)" =~ \"target_directory\":\"([^\"]+)\" ]] \
    && TARGET_DIR="${BASH_REMATCH[1]}"
NEW_BIN="$TARGET_DIR/release/toolgate"
BARE_BIN="$TARGET_DIR/release/examples/bare_hello"
[[ -x $NEW_BIN && -x $BARE_BIN ]] || fail "missing $NEW_BIN or $BARE_BIN"
# describe REV: short hash and the start of its subject.
describe() {
    local subject
    subject="$(git log -1 --format=%s "$1")"
    (( ${#subject} <= 60 )) || subject="${subject:0:60}…"
    echo "$(git rev-parse --short "$1") ($subject)"
}
NEW_DESC="$(describe HEAD)"
[[ -z "$(git status --porcelain -- src crates Cargo.toml Cargo.lock schema.sql)" ]] || NEW_DESC+=" with uncommitted changes"

BASELINE="${BASELINE:-}"
if [[ -z $BASELINE ]]; then
    BASELINE="$(git merge-base HEAD main 2>/dev/null)" || fail "no merge-base with main: set BASELINE=<rev> or BASELINE=none"
    [[ "$BASELINE" != "$(git rev-parse HEAD)" ]] || BASELINE="HEAD~1"
fi
SIDES=(new)
OLD_DESC="none"
RUN_ENV="BASELINE=$BASELINE"
BUILD_S=""
if [[ -n "${OLD_BIN:-}" ]]; then
    [[ -x $OLD_BIN ]] || fail "OLD_BIN=$OLD_BIN is not an executable"
    OLD_DESC="the prebuilt binary $OLD_BIN"
    RUN_ENV="OLD_BIN=$OLD_BIN"
    cp "$OLD_BIN" "$TMP/toolgate-old"
    OLD_BIN="$TMP/toolgate-old"
    SIDES=(old new)
elif [[ $BASELINE != none ]]; then
    OLD_REV="$(git rev-parse --verify --quiet "$BASELINE^{commit}")" || fail "BASELINE=$BASELINE is not a commit"
    OLD_DESC="$(describe "$OLD_REV"), BASELINE=$BASELINE"
    WORKTREE="$TMP/baseline"
    log "building the old binary: $OLD_DESC, in a temporary worktree"
    t0=$SECONDS
    git worktree add --detach --quiet "$WORKTREE" "$OLD_REV"
    CARGO_TARGET_DIR="$TMP/baseline-target" cargo build --release --bin toolgate --manifest-path "$WORKTREE/Cargo.toml"
    BUILD_S=$(( SECONDS - t0 ))
    cp "$TMP/baseline-target/release/toolgate" "$TMP/toolgate-old"
    git worktree remove --force "$WORKTREE"
    WORKTREE=""
    rm -rf "$TMP/baseline-target"
    OLD_BIN="$TMP/toolgate-old"
    SIDES=(old new)
fi

if [[ -z "${ES256_NS:-}" ]]; then
    log "one ES256 verification: cargo bench --bench micro -- --exact jose/es256_verify"
    cargo bench --bench micro -- --warm-up-time 1 --measurement-time 3 --exact jose/es256_verify >"$TMP/es256.out" 2>&1 \
        || { cat "$TMP/es256.out" >&2; fail "the ES256 micro-benchmark failed"; }
    # "jose/es256_verify  time:   [84.324 µs 84.402 µs 84.714 µs]": the middle one is the estimate.
    estimate='time: +\[[0-9.]+ [^ ]+ ([0-9.]+) (ns|µs|us|ms) '
    [[ "$(<"$TMP/es256.out")" =~ $estimate ]] \
        || { cat "$TMP/es256.out" >&2; fail "cannot read the ES256 figure"; }
    ES256_NS="$(milli "${BASH_REMATCH[1]}")"
    case "${BASH_REMATCH[2]}" in
        ns) ES256_NS=$(( ES256_NS / 1000 )) ;;
        µs | us) ;;
        ms) ES256_NS=$(( ES256_NS * 1000 )) ;;
    esac
fi
check_int ES256_NS "$ES256_NS" 100000000
log "one ES256 verification: $ES256_NS ns"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
T_START=$SECONDS

# --- servers -----------------------------------------------------------------------------------
# start_server LOG CMD...: run CMD (listening on 127.0.0.1:0) in the background; STARTED_PID and
# STARTED_URL once its log names the address it listens on.
start_server() {
    local logf="$1" i
    shift
    : >"$logf"
    "$@" >"$logf" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    for (( i = 0; i < 300; i++ )); do
        if [[ "$(<"$logf")" =~ \ on\ (https?)://(127\.0\.0\.1:[0-9]+) ]]; then
            STARTED_URL="${BASH_REMATCH[1]}://${BASH_REMATCH[2]}"
            return 0
        fi
        kill -0 "$STARTED_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$logf" >&2
    fail "$1 did not start (log: $logf)"
}

# http METHOD URL EXPECT [BEARER [BODY_FILE]]: one request; prints the body; fails unless the
# status is EXPECT.
http() {
    local method="$1" url="$2" expect="$3" bearer="${4:-}" body="${5:-}" code
    local args=(-s -o "$TMP/http.body" -w '%{http_code}' -X "$method")
    [[ -z $bearer ]] || args+=(-H "Authorization: Bearer $bearer")
    [[ -z $body ]] || args+=(-H 'Content-Type: application/json' --data-binary "@$body")
    [[ $url != https://* ]] || args+=(--cacert "$CERTS/ca.pem")
    code="$(curl "${args[@]}" "$url")" || fail "$method $url: curl failed"
    [[ $code == "$expect" ]] || fail "$method $url: HTTP $code, expected $expect: $(head -c 300 "$TMP/http.body")"
    cat "$TMP/http.body"
}

wait_http() {
    local i
    for (( i = 0; i < 100; i++ )); do
        curl -sf -o /dev/null ${CERTS:+--cacert "$CERTS/ca.pem"} "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "$1 does not answer"
}

b64url() { printf '%s' "$1" | base64 -w0 | tr -d '=' | tr '/+' '_-'; }
STUB="$(b64url '{"alg":"none"}').$(b64url '{"sub":"bench","namespace":"bench"}').stub"
CS_RES="https://mcp.example.com/tools/code-search"
SQL_RES="https://mcp.example.com/tools/sql-admin"
GW_RES="https://bench.example.com/mcp"
GW_TOOL_RES="$GW_RES/bench-tool"
for aud in "$CS_RES" "$GW_TOOL_RES"; do
    printf '{"grant_type":"urn:ietf:params:oauth:grant-type:token-exchange","subject_token":"%s","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","audience":"%s"}' \
        "$STUB" "$aud" >"$TMP/exchange-${aud##*/}.json"
done
printf '%s' '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"bench-tool","arguments":{}}}' >"$TMP/mcp-call.json"

# token URL AUDIENCE_NAME: one exchanged token (AUDIENCE_NAME: code-search or bench-tool).
token() {
    local body
    body="$(http POST "$1/v1/exchange/token" 200 "" "$TMP/exchange-$2.json")"
    [[ $body =~ \"access_token\":\"([^\"]+)\" ]] || fail "no access_token from $1"
    echo "${BASH_REMATCH[1]}"
}

# mint URL OUT: $NTOKENS code-search tokens, one per line, from one curl process (keep-alive;
# the query string only makes the URLs distinct for curl's globbing).
mint() {
    curl -s -X POST -H 'Content-Type: application/json' --data-binary "@$TMP/exchange-code-search.json" \
        -w ' %{http_code}\n' "$1/v1/exchange/token?n=[1-$NTOKENS]" >"$TMP/mint.out" || fail "minting: curl failed"
    local ok
    ok="$(grep -c '"access_token":"[^"]*".* 200$' "$TMP/mint.out" || true)"
    (( ok == NTOKENS )) || fail "minting: $ok of $NTOKENS exchanges answered 200 with a token"
    sed -E 's/^.*"access_token":"([^"]+)".*$/\1/' "$TMP/mint.out" >"$2"
}

declare -A TG TG_PID GW GW_PID
start_server "$TMP/bare.log" "$BARE_BIN" --listen 127.0.0.1:0
BARE="$STARTED_URL"
BARE_PID="$STARTED_PID"
wait_http "$BARE/"
for side in "${SIDES[@]}"; do
    bin="$NEW_BIN"
    [[ $side == new ]] || bin="$OLD_BIN"
    start_server "$TMP/toolgate-$side.log" "$bin" serve --dev --listen 127.0.0.1:0 --db "$TMP/$side.db"
    TG[$side]="$STARTED_URL"
    TG_PID[$side]="$STARTED_PID"
    wait_http "${TG[$side]}/v1/sys/health"
    http POST "${TG[$side]}/v1/mcp/tools" 201 "" <(printf '{"tool_id":"code-search","resource_uri":"%s"}' "$CS_RES") >/dev/null
    http POST "${TG[$side]}/v1/mcp/tools" 201 "" <(printf '{"tool_id":"sql-admin","resource_uri":"%s"}' "$SQL_RES") >/dev/null
    http POST "${TG[$side]}/v1/mcp/tools" 201 "" \
        <(printf '{"tool_id":"bench-tool","resource_uri":"%s","server_id":"bench-server"}' "$GW_TOOL_RES") >/dev/null
    start_server "$TMP/gateway-$side.log" "$bin" gateway --toolgate "${TG[$side]}" --listen 127.0.0.1:0 \
        --upstream "$BARE" --server-id bench-server --resource "$GW_RES" --route /hello=bench-tool
    GW[$side]="$STARTED_URL"
    GW_PID[$side]="$STARTED_PID"
    wait_http "${GW[$side]}/.well-known/oauth-protected-resource"
    # Guarded (no token: 401); with a token both shapes reach bare_hello.
    http GET "${GW[$side]}/hello/x" 401 >/dev/null
    http POST "${GW[$side]}/mcp" 401 "" "$TMP/mcp-call.json" >/dev/null
    tok="$(token "${TG[$side]}" bench-tool)"
    http GET "${GW[$side]}/hello/x" 200 "$tok" >/dev/null
    http POST "${GW[$side]}/mcp" 200 "$tok" "$TMP/mcp-call.json" >/dev/null
    log "$side: toolgate ${TG[$side]}, gateway ${GW[$side]} -> bare_hello $BARE"
done

# The TLS side: the new binary behind its own throw-away CA.
"$NEW_BIN" dev-certs "$CERTS" >/dev/null
start_server "$TMP/toolgate-tls.log" "$NEW_BIN" serve --dev --listen 127.0.0.1:0 --db "$TMP/tls.db" \
    --tls-cert "$CERTS/server.pem" --tls-key "$CERTS/server.key"
TLS_TG="$STARTED_URL"
TLS_TG_PID="$STARTED_PID"
[[ $TLS_TG == https://* ]] || fail "the TLS toolgate does not say https"
wait_http "$TLS_TG/v1/sys/health"
http POST "$TLS_TG/v1/mcp/tools" 201 "" <(printf '{"tool_id":"code-search","resource_uri":"%s"}' "$CS_RES") >/dev/null
http POST "$TLS_TG/v1/mcp/tools" 201 "" \
    <(printf '{"tool_id":"bench-tool","resource_uri":"%s","server_id":"bench-server"}' "$GW_TOOL_RES") >/dev/null
# The TLS gateway reports to the plain new toolgate (its clients' TLS is not what is measured).
start_server "$TMP/gateway-tls.log" "$NEW_BIN" gateway --toolgate "${TG[new]}" --listen 127.0.0.1:0 \
    --upstream "$BARE" --server-id bench-server --resource "$GW_RES" \
    --tls-cert "$CERTS/server.pem" --tls-key "$CERTS/server.key"
TLS_GW="$STARTED_URL"
TLS_GW_PID="$STARTED_PID"
wait_http "$TLS_GW/.well-known/oauth-protected-resource"
http POST "$TLS_GW/mcp" 200 "$(token "${TG[new]}" bench-tool)" "$TMP/mcp-call.json" >/dev/null
log "TLS: toolgate $TLS_TG, gateway $TLS_GW"

# The DPoP side: the new binary, its tools DPoP-bound only; a 300 s proof window, since the
# proofs of a run are made before it.
start_server "$TMP/toolgate-dpop.log" "$NEW_BIN" serve --dev --listen 127.0.0.1:0 --db "$TMP/dpop.db" \
    --dpop-window 300
DPOP_TG="$STARTED_URL"
DPOP_TG_PID="$STARTED_PID"
wait_http "$DPOP_TG/v1/sys/health"
http POST "$DPOP_TG/v1/mcp/tools" 201 "" \
    <(printf '{"tool_id":"code-search","resource_uri":"%s","sender_constraint":"dpop"}' "$CS_RES") >/dev/null
http POST "$DPOP_TG/v1/mcp/tools" 201 "" \
    <(printf '{"tool_id":"bench-tool","resource_uri":"%s","server_id":"bench-server","sender_constraint":"dpop"}' "$GW_TOOL_RES") >/dev/null
start_server "$TMP/gateway-dpop.log" "$NEW_BIN" gateway --toolgate "$DPOP_TG" --listen 127.0.0.1:0 \
    --upstream "$BARE" --server-id bench-server --resource "$GW_RES" --dpop-nonce --dpop-window 300
DPOP_GW="$STARTED_URL"
DPOP_GW_PID="$STARTED_PID"
wait_http "$DPOP_GW/.well-known/oauth-protected-resource"
DPOP_KEY="$TMP/dpop-agent.key"
# dpop_token AUDIENCE: a token bound to DPOP_KEY (made on first use).
dpop_token() {
    "$NEW_BIN" token exchange --url "$DPOP_TG" --dpop-key "$DPOP_KEY" --audience "$1" --subject-token "$STUB" \
        || fail "no DPoP-bound token for $1"
}
# dpop_proofs URL TOKEN PER_SECOND [NONCE]: proof files for a run ($TMP/proofs.warmup and
# $TMP/proofs.measure), each with room for PER_SECOND requests a second.
dpop_proofs() {
    local phase secs
    for phase in warmup measure; do
        secs="$WARMUP"
        [[ $phase == warmup ]] || secs="$SECS"
        "$NEW_BIN" dpop proof --key "$DPOP_KEY" --method POST --url "$1" --token "$2" ${4:+--nonce "$4"} \
            --count "$(( $3 * secs ))" >"$TMP/proofs.$phase" || fail "toolgate dpop proof failed"
    done
}
# dpop_nonce TOKEN: the gateway's nonce, from the DPoP-Nonce header of a 401 to a proof without one.
dpop_nonce() {
    local proof
    proof="$("$NEW_BIN" dpop proof --key "$DPOP_KEY" --method POST --url "$DPOP_GW/mcp" --token "$1")"
    curl -s -o /dev/null -D - -X POST -H 'Content-Type: application/json' -H "Authorization: DPoP $1" \
        -H "DPoP: $proof" --data-binary "@$TMP/mcp-call.json" "$DPOP_GW/mcp" \
        | tr -d '\r' | sed -n 's/^[Dd][Pp][Oo][Pp]-[Nn]once: //p'
}
tok="$(dpop_token "$GW_TOOL_RES")"
nonce="$(dpop_nonce "$tok")"
[[ -n $nonce ]] || fail "the DPoP gateway gave no nonce"
proof="$("$NEW_BIN" dpop proof --key "$DPOP_KEY" --method POST --url "$DPOP_GW/mcp" --token "$tok" --nonce "$nonce")"
answer="$(curl -s -w ' %{http_code}' -X POST -H 'Content-Type: application/json' -H "Authorization: DPoP $tok" \
    -H "DPoP: $proof" --data-binary "@$TMP/mcp-call.json" "$DPOP_GW/mcp")"
[[ $answer == *' 200' ]] || fail "the DPoP gateway refused a good proof: $answer"
http POST "$DPOP_GW/mcp" 401 "$tok" "$TMP/mcp-call.json" >/dev/null
log "DPoP: toolgate $DPOP_TG, gateway $DPOP_GW"

# The rotation side: the new binary, a short publish-ahead, a gateway that fetches keys every
# second (the defaults, 600 s and 60 s, keep the same ratio at production scale).
ROT_AHEAD=4
start_server "$TMP/toolgate-rot.log" "$NEW_BIN" serve --dev --listen 127.0.0.1:0 --db "$TMP/rot.db" \
    --publish-ahead "$ROT_AHEAD"
ROT_TG="$STARTED_URL"
ROT_TG_PID="$STARTED_PID"
wait_http "$ROT_TG/v1/sys/health"
http POST "$ROT_TG/v1/mcp/tools" 201 "" <(printf '{"tool_id":"code-search","resource_uri":"%s"}' "$CS_RES") >/dev/null
http POST "$ROT_TG/v1/mcp/tools" 201 "" \
    <(printf '{"tool_id":"bench-tool","resource_uri":"%s","server_id":"bench-server"}' "$GW_TOOL_RES") >/dev/null
start_server "$TMP/gateway-rot.log" "$NEW_BIN" gateway --toolgate "$ROT_TG" --listen 127.0.0.1:0 \
    --upstream "$BARE" --server-id bench-server --resource "$GW_RES" --key-refresh 1
ROT_GW="$STARTED_URL"
ROT_GW_PID="$STARTED_PID"
wait_http "$ROT_GW/.well-known/oauth-protected-resource"
http POST "$ROT_GW/mcp" 200 "$(token "$ROT_TG" bench-tool)" "$TMP/mcp-call.json" >/dev/null
log "rotation: toolgate $ROT_TG (publish-ahead $ROT_AHEAD s), gateway $ROT_GW"

# quiesce: wait until the audit queue of every toolgate is empty (GET /v1/stats), so that no
# run pays for the last one's log and a run's CPU time includes writing its own rows.
quiesce() {
    local side body i
    for side in "${SIDES[@]}" tls dpop; do
        local url="${TG[$side]:-$TLS_TG}"
        [[ $side != dpop ]] || url="$DPOP_TG"
        for (( i = 0; ; i++ )); do
            body="$(http GET "$url/v1/stats" 200)"
            [[ $body =~ \"queue_depth\":([0-9]+) ]] || break # a toolgate without the figure
            (( BASH_REMATCH[1] == 0 )) && break
            (( i < 1200 )) || fail "the audit queue of $side did not drain"
            sleep 0.1
        done
    done
}

# --- measuring ---------------------------------------------------------------------------------
# Per "case,side": space-separated per-round figures.
declare -A RPS P50 P99 CPU
# run CASE SIDE URL EXPECT "PID..." [VAR=VALUE...]: a warm-up, then the measured run; every
# status is checked by bench.lua (VAR=VALUE configure it).
run() {
    local case="$1" side="$2" url="$3" expect="$4" pids="$5"
    shift 5
    local phase out="$TMP/wrk.out" cpu0 cpu1 responses
    local -a args
    for phase in warmup measure; do
        if [[ $phase == warmup ]]; then
            args=(-t"$THREADS" -c"$CONNS" -d"${WARMUP}s")
        else
            args=(-t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency)
        fi
        quiesce
        # shellcheck disable=SC2086 # a list of pids
        cpu0="$(cpu_ms $pids)"
        env "$@" BENCH_PHASE="$phase" BENCH_EXPECT="$expect" BENCH_THREADS="$THREADS" wrk "${args[@]}" -s "$LUA" "$url" >"$out" 2>&1 \
            || { cat "$out" >&2; fail "$case ($side): wrk failed ($phase)"; }
        quiesce
        # shellcheck disable=SC2086
        cpu1="$(cpu_ms $pids)"
        [[ "$(<"$out")" =~ BENCH_RESULT\ responses=([0-9]+)\ unexpected=([0-9]+)\ first_unexpected=([0-9]+) ]] \
            || { cat "$out" >&2; fail "$case ($side): no BENCH_RESULT line from wrk ($phase)"; }
        responses="${BASH_REMATCH[1]}"
        (( responses > 0 )) || { cat "$out" >&2; fail "$case ($side): no responses ($phase)"; }
        (( BASH_REMATCH[2] == 0 )) \
            || { cat "$out" >&2; fail "$case ($side): ${BASH_REMATCH[2]} responses were not $expect (first: ${BASH_REMATCH[3]}) ($phase)"; }
        ! grep -q '^  Socket errors:' "$out" || { cat "$out" >&2; fail "$case ($side): socket errors ($phase)"; }
    done
    local rps="" p50="" p99="" a b _
    while read -r a b _; do
        case "$a" in
            Requests/sec:) rps="$b" ;;
            50%) p50="$b" ;;
            99%) p99="$b" ;;
        esac
    done <"$out"
    [[ -n $rps && -n $p50 && -n $p99 ]] || { cat "$out" >&2; fail "$case ($side): cannot read wrk's output"; }
    rps=$(( ($(milli "$rps") + 500) / 1000 ))
    local key="$case,$side"
    RPS[$key]+="$rps "
    P50[$key]+="$(to_us "$p50") "
    P99[$key]+="$(to_us "$p99") "
    CPU[$key]+="$(( (cpu1 - cpu0) * 1000 / responses )) "
    log "$case ($side): $rps requests/s, p50 $p50, p99 $p99, $(( (cpu1 - cpu0) * 1000 / responses )) µs CPU/response ($responses responses)"
}

# One case on one side: its tokens are minted right before its run.
case_on() {
    local case="$1" side="$2"
    local tg="${TG[$side]}" pid="${TG_PID[$side]}" tok
    case "$case" in
        repeat)
            tok="$(token "$tg" code-search)"
            printf '{"token":"%s","tool_id":"code-search"}' "$tok" >"$TMP/verify.json"
            http POST "$tg/v1/mcp/verify" 200 "" "$TMP/verify.json" >/dev/null
            run "$case" "$side" "$tg/v1/mcp/verify" 200 "$pid" BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/verify.json"
            ;;
        distinct)
            mint "$tg" "$TMP/tokens.txt"
            run "$case" "$side" "$tg/v1/mcp/verify" 200 "$pid" BENCH_TOKENS_FILE="$TMP/tokens.txt" BENCH_TOOL_ID=code-search
            ;;
        exchange)
            run "$case" "$side" "$tg/v1/exchange/token" 200 "$pid" BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/exchange-code-search.json"
            ;;
        deny)
            tok="$(token "$tg" code-search)"
            printf '{"token":"%s","tool_id":"sql-admin"}' "$tok" >"$TMP/deny.json"
            [[ "$(http POST "$tg/v1/mcp/verify" 403 "" "$TMP/deny.json")" == *'"check":"audience"'* ]] \
                || fail "the denial is not the audience check"
            run "$case" "$side" "$tg/v1/mcp/verify" 403 "$pid" BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/deny.json"
            ;;
        gw_get)
            tok="$(token "$tg" bench-tool)"
            run "$case" "$side" "${GW[$side]}/hello/x" 200 "${GW_PID[$side]} $pid" BENCH_BEARER="$tok"
            ;;
        gw_post)
            tok="$(token "$tg" bench-tool)"
            run "$case" "$side" "${GW[$side]}/mcp" 200 "${GW_PID[$side]} $pid" BENCH_BEARER="$tok" \
                BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/mcp-call.json"
            ;;
        *) fail "unknown case $case" ;;
    esac
}

# handshakes KIND: `openssl s_time` against the TLS toolgate for SECS seconds, full (-new) or
# resumed (-reuse) handshakes, no request; records handshakes/s and server CPU µs per handshake.
handshakes() {
    local kind="$1" out="$TMP/s_time.out" cpu0 cpu1 n t0 t1 ms
    # s_time's -reuse takes its session before a TLS 1.3 ticket arrives, so it never resumes
    # over 1.3: resumption is measured over TLS 1.2 (the rustls client of tests/it/tls.rs shows
    # 1.3 resumption).
    local -a flag=(-new)
    [[ $kind == full ]] || flag=(-reuse -tls1_2)
    cpu0="$(cpu_ms "$TLS_TG_PID")"
    t0="$(date +%s%N)"
    openssl s_time -connect "${TLS_TG#https://}" -CAfile "$CERTS/ca.pem" "${flag[@]}" -time "$SECS" >"$out" 2>&1 \
        || { cat "$out" >&2; fail "openssl s_time ${flag[*]} failed"; }
    t1="$(date +%s%N)"
    cpu1="$(cpu_ms "$TLS_TG_PID")"
    # "1234 connections in 2.00s; ..." (that time is s_time's own CPU): the count, over the wall
    # time measured here.
    [[ "$(<"$out")" =~ ([0-9]+)\ connections\ in\ [0-9.]+s ]] \
        || { cat "$out" >&2; fail "cannot read openssl s_time's output"; }
    n="${BASH_REMATCH[1]}"
    ms=$(( (t1 - t0) / 1000000 ))
    (( n > 0 && ms > 0 )) || fail "no TLS handshakes ($kind)"
    RPS["hs_$kind,new"]+="$(( n * 1000 / ms )) "
    CPU["hs_$kind,new"]+="$(( (cpu1 - cpu0) * 1000 / n )) "
    log "TLS handshakes, $kind: $(( n * 1000 / ms ))/s, $(( (cpu1 - cpu0) * 1000 / n )) µs server CPU each"
}

# One TLS case (new binary only).
tls_case() {
    local tok
    case "$1" in
        tls_repeat)
            tok="$(token "$TLS_TG" code-search)"
            printf '{"token":"%s","tool_id":"code-search"}' "$tok" >"$TMP/verify-tls.json"
            http POST "$TLS_TG/v1/mcp/verify" 200 "" "$TMP/verify-tls.json" >/dev/null
            run tls_repeat new "$TLS_TG/v1/mcp/verify" 200 "$TLS_TG_PID" BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/verify-tls.json"
            ;;
        tls_gw_post)
            tok="$(token "${TG[new]}" bench-tool)"
            run tls_gw_post new "$TLS_GW/mcp" 200 "$TLS_GW_PID ${TG_PID[new]}" BENCH_BEARER="$tok" \
                BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/mcp-call.json"
            ;;
        hs_full) handshakes full ;;
        hs_resumed) handshakes resumed ;;
        *) fail "unknown TLS case $1" ;;
    esac
}
TLS_CASES=(tls_repeat tls_gw_post hs_full hs_resumed)

# One DPoP case (new binary only): a bound token and a new proof each request.
dpop_case() {
    local tok nonce
    case "$1" in
        dpop_verify)
            tok="$(dpop_token "$CS_RES")"
            dpop_proofs "$CS_RES" "$tok" 20000
            run dpop_verify new "$DPOP_TG/v1/mcp/verify" 200 "$DPOP_TG_PID" BENCH_DPOP_FILE="$TMP/proofs" \
                BENCH_DPOP_TOKEN="$tok" BENCH_DPOP_AS=body BENCH_TOOL_ID=code-search BENCH_DPOP_HTU="$CS_RES"
            ;;
        dpop_gw_post)
            tok="$(dpop_token "$GW_TOOL_RES")"
            nonce="$(dpop_nonce "$tok")"
            dpop_proofs "$DPOP_GW/mcp" "$tok" 20000 "$nonce"
            run dpop_gw_post new "$DPOP_GW/mcp" 200 "$DPOP_GW_PID $DPOP_TG_PID" BENCH_DPOP_FILE="$TMP/proofs" \
                BENCH_DPOP_TOKEN="$tok" BENCH_DPOP_AS=header BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/mcp-call.json"
            ;;
        *) fail "unknown DPoP case $1" ;;
    esac
}
DPOP_CASES=(dpop_verify dpop_gw_post)

CASES=(bare repeat distinct exchange deny direct_get gw_get direct_post gw_post)
declare -A LABEL=(
    [bare]="bare hyper GET / (ceiling)"
    [repeat]="verify, repeated token (200)"
    [distinct]="verify, $NTOKENS distinct tokens (200)"
    [exchange]="exchange, dev stub (200)"
    [deny]="verify denial, wrong audience (403)"
    [direct_get]="direct: bare_hello GET /hello/x (200)"
    [gw_get]="gateway: GET /hello/x, bearer token (200)"
    [direct_post]="direct: bare_hello POST /mcp tools/call (200)"
    [gw_post]="gateway: POST /mcp tools/call (200)"
    [tls_repeat]="verify over TLS, keep-alive, repeated token (200)"
    [tls_gw_post]="gateway over TLS: POST /mcp tools/call (200)"
    [hs_full]="full handshakes, TLS 1.3 (-new)"
    [hs_resumed]="resumed handshakes, TLS 1.2 (-reuse -tls1_2)"
    [dpop_verify]="verify, DPoP-bound token, new proof each request (200)"
    [dpop_gw_post]="gateway: POST /mcp tools/call, DPoP-bound token, new proof each request (200)"
)
declare -A tls_plain
for (( r = 1; r <= ROUNDS; r++ )); do
    order=("${SIDES[@]}")
    (( r % 2 )) || order=(new old)
    [[ ${#SIDES[@]} -eq 2 ]] || order=(new)
    log "round $r of $ROUNDS: ${order[*]}"
    for case in "${CASES[@]}"; do
        case "$case" in
            bare) run bare bare "$BARE/" 200 "$BARE_PID" ;;
            direct_get) run direct_get bare "$BARE/hello/x" 200 "$BARE_PID" ;;
            direct_post) run direct_post bare "$BARE/mcp" 200 "$BARE_PID" BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/mcp-call.json" ;;
            *) for side in "${order[@]}"; do case_on "$case" "$side"; done ;;
        esac
    done
    for case in "${TLS_CASES[@]}"; do tls_case "$case"; done
    for case in "${DPOP_CASES[@]}"; do dpop_case "$case"; done
done
# --- key rotation under load ------------------------------------------------------------------
# kid_of TOKEN: the kid of a compact JWS's header.
kid_of() {
    local h="${1%%.*}"
    h="$(printf '%s' "$h" | tr '_-' '/+')"
    while (( ${#h} % 4 )); do h+="="; done
    [[ "$(printf '%s' "$h" | base64 -d)" =~ \"kid\":\"([^\"]+)\" ]] || fail "a token without a kid"
    echo "${BASH_REMATCH[1]}"
}
# rot_segment N SECONDS [rotate]: one segment of load (gateway, verify, exchange at once, each
# `wrk -t1 -c16`), with every token minted so far; with "rotate", `toolgate keys rotate` one
# second in. Fails on any response that is not 200.
declare -A ROT_RESPONSES=()
ROT_KIDS=()
rot_segment() {
    local seg="$1" secs="$2" rotate="${3:-}" name pid out pids=() body
    local -a names=(gateway verify exchange)
    env BENCH_BEARERS_FILE="$TMP/rot-bearers" BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/mcp-call.json" \
        BENCH_EXPECT=200 BENCH_THREADS=1 wrk -t1 -c16 -d"${secs}s" -s "$LUA" "$ROT_GW/mcp" >"$TMP/rot-gateway.out" 2>&1 &
    pids+=($!)
    env BENCH_TOKENS_FILE="$TMP/rot-tokens" BENCH_TOOL_ID=code-search BENCH_EXPECT=200 BENCH_THREADS=1 \
        wrk -t1 -c16 -d"${secs}s" -s "$LUA" "$ROT_TG/v1/mcp/verify" >"$TMP/rot-verify.out" 2>&1 &
    pids+=($!)
    env BENCH_METHOD=POST BENCH_BODY_FILE="$TMP/exchange-code-search.json" BENCH_EXPECT=200 BENCH_THREADS=1 \
        wrk -t1 -c16 -d"${secs}s" -s "$LUA" "$ROT_TG/v1/exchange/token" >"$TMP/rot-exchange.out" 2>&1 &
    pids+=($!)
    if [[ $rotate == rotate ]]; then
        sleep 1
        body="$("$NEW_BIN" keys rotate --url "$ROT_TG" --json)" || fail "toolgate keys rotate failed"
        [[ $body =~ \"signs_from\":\ \"([^\"]+)\" ]] || fail "no signs_from in: $body"
        ROT_SIGNS_FROM="$(date -u -d "${BASH_REMATCH[1]}" +%s)"
        [[ $body =~ \"kid\":\ \"([^\"]+)\" ]] || fail "no kid in: $body"
        ROT_NEW_KID="${BASH_REMATCH[1]}"
        log "rotation: segment $seg, new key $ROT_NEW_KID signs from $(date -u -d "@$ROT_SIGNS_FROM" +%T)"
    fi
    for pid in "${pids[@]}"; do wait "$pid" || fail "rotation segment $seg: wrk failed"; done
    for name in "${names[@]}"; do
        out="$TMP/rot-$name.out"
        [[ "$(<"$out")" =~ BENCH_RESULT\ responses=([0-9]+)\ unexpected=([0-9]+)\ first_unexpected=([0-9]+) ]] \
            || { cat "$out" >&2; fail "rotation segment $seg ($name): no BENCH_RESULT line"; }
        (( BASH_REMATCH[1] > 0 )) || { cat "$out" >&2; fail "rotation segment $seg ($name): no responses"; }
        (( BASH_REMATCH[2] == 0 )) \
            || { cat "$out" >&2; fail "rotation segment $seg ($name): ${BASH_REMATCH[2]} responses were not 200 (first: ${BASH_REMATCH[3]})"; }
        ! grep -q '^  Socket errors:' "$out" || { cat "$out" >&2; fail "rotation segment $seg ($name): socket errors"; }
        ROT_RESPONSES[$name]=$(( ${ROT_RESPONSES[$name]:-0} + BASH_REMATCH[1] ))
        log "rotation segment $seg: $name ${BASH_REMATCH[1]} responses, all 200"
    done
}
# rot_mint: one more gateway token and one more verify token, from the key signing now.
rot_mint() {
    local gw cs
    gw="$(token "$ROT_TG" bench-tool)"
    cs="$(token "$ROT_TG" code-search)"
    echo "$gw" >>"$TMP/rot-bearers"
    echo "$cs" >>"$TMP/rot-tokens"
    ROT_KIDS+=("$(kid_of "$cs")")
}
: >"$TMP/rot-bearers"
: >"$TMP/rot-tokens"
ROT_SECS=$(( ROT_AHEAD + 2 ))
ROT_T0=$SECONDS
rot_mint
for seg in 1 2 3; do
    if (( seg > 1 )); then
        # The new key signs once its signs_from has passed (the daemon's clock is in seconds).
        while (( $(date +%s) < ROT_SIGNS_FROM )); do sleep 0.2; done
        rot_mint
        [[ ${ROT_KIDS[-1]} == "$ROT_NEW_KID" ]] || fail "rotation: segment $seg's tokens are signed by ${ROT_KIDS[-1]}, not the new key $ROT_NEW_KID"
        (( ${#ROT_KIDS[@]} == seg )) && [[ ${ROT_KIDS[-1]} != "${ROT_KIDS[-2]}" ]] || fail "rotation: no new kid"
    fi
    if (( seg < 3 )); then rot_segment "$seg" "$ROT_SECS" rotate; else rot_segment "$seg" "$ROT_SECS"; fi
done
ROT_WALL=$(( SECONDS - ROT_T0 ))
"$NEW_BIN" keys list --url "$ROT_TG" >"$TMP/rot-keys.txt" || fail "toolgate keys list failed"
log "rotation: $(grep -c ' active ' "$TMP/rot-keys.txt") active key, $(grep -c ' retiring ' "$TMP/rot-keys.txt") retiring"
(( $(grep -c ' retiring ' "$TMP/rot-keys.txt") == 2 )) || { cat "$TMP/rot-keys.txt" >&2; fail "rotation: expected two retiring keys"; }

for pid in "$BARE_PID" "${TG_PID[@]}" "${GW_PID[@]}" "$TLS_TG_PID" "$TLS_GW_PID" "$DPOP_TG_PID" "$DPOP_GW_PID" "$ROT_TG_PID" "$ROT_GW_PID"; do
    kill -0 "$pid" 2>/dev/null || fail "a server died during the run (pid $pid)"
done
WALL=$(( SECONDS - T_START ))
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report ------------------------------------------------------------------------------------
# med ARRAY KEY: the median of the per-round figures, or "" when that side did not run.
med() {
    local -n arr="$1"
    [[ -n "${arr[$2]:-}" ]] || return 0
    # shellcheck disable=SC2086 # the figures, one word each
    median ${arr[$2]}
}
or_dash() { echo "${1:-–}"; }
# pair ARRAY CASE SEP: "old SEP new" of CASE's medians, or only new's without an old binary.
pair() {
    local o n
    o="$(med "$1" "$2,old")"
    n="$(med "$1" "$2,new")"
    echo "${o:+$o$3}$n"
}
BARE_RPS="$(med RPS bare,bare)"
BARE_CPU="$(med CPU bare,bare)"
ES256_US="$(( ES256_NS / 1000 )).$(printf '%01d' $(( ES256_NS % 1000 / 100 )))"
AIMS=()
verdict() { if (( $1 )); then echo PASS; else echo FAIL; fi; }

{
    printf '# toolgate end-to-end benchmark\n\n'
    printf '%s · `nproc` = %s · CPU: %s · release builds, `serve --dev` on new databases\n\n' \
        "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$(nproc)" "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    printf -- '- command: `%sbash scripts/bench.sh %s` (ROUNDS=%s, WARMUP=%s): per case and side `wrk -t%s -c%s -d%ss --latency -s scripts/bench/bench.lua URL` after a %s s warm-up; every status checked\n' \
        "$RUN_ENV " "$SECS" "$ROUNDS" "$WARMUP" "$THREADS" "$CONNS" "$SECS" "$WARMUP"
    printf -- '- new: %s\n- old: %s%s\n' "$NEW_DESC" "$OLD_DESC" "${BUILD_S:+ (its release build took $BUILD_S s)}"
    printf -- '- rounds alternate the order (old first in odd rounds, new first in even ones); figures are medians over the rounds; bare_hello rows (bare, direct) run once per round\n'
    printf -- '- server CPU µs/response: user + system CPU time of the server process (all threads, audit writer included) during the measured run, per response; gateway rows add the toolgate behind the gateway, which audits each decision the gateway reports\n'
    printf -- '- wrk and every server share the same %s cores over loopback: relative figures, not capacity. Load average before: %s; after: %s. Wall time of the measurements: %s s\n\n' \
        "$(nproc)" "$LOAD_BEFORE" "$LOAD_AFTER" "$WALL"
    printf '| case | old req/s | new req/s | new/old | new ÷ bare | server CPU µs/response (old → new) | p50 µs (old / new) | p99 µs (old / new) |\n'
    printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
    for case in "${CASES[@]}"; do
        if [[ $case == bare || $case == direct_* ]]; then
            k="$case,bare"
            printf '| %s | – | %s | – | %s | %s | %s | %s |\n' "${LABEL[$case]}" "$(med RPS "$k")" \
                "$(ratio "$(med RPS "$k")" "$BARE_RPS")" "$(med CPU "$k")" "$(med P50 "$k")" "$(med P99 "$k")"
            continue
        fi
        o="$(med RPS "$case,old")"
        n="$(med RPS "$case,new")"
        no="–"
        if [[ -n $o ]]; then
            no="$(ratio "$n" "$o")"
            AIMS+=("${LABEL[$case]}: new/old $no — aim ≥ 0.90: $(verdict "$(( $(hundredths "$no") >= 90 ))")")
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$case]}" "$(or_dash "$o")" "$n" "$no" \
            "$(ratio "$n" "$BARE_RPS")" "$(pair CPU "$case" ' → ')" "$(pair P50 "$case" ' / ')" "$(pair P99 "$case" ' / ')"
    done
    printf '\n## TLS (new binary only)\n\n'
    printf '| case | req/s | ÷ the same over plain HTTP | server CPU µs/response | p50 µs | p99 µs |\n'
    printf '|---|---:|---:|---:|---:|---:|\n'
    tls_plain=([tls_repeat]=repeat [tls_gw_post]=gw_post)
    for case in tls_repeat tls_gw_post; do
        printf '| %s | %s | %s | %s | %s | %s |\n' "${LABEL[$case]}" "$(med RPS "$case,new")" \
            "$(ratio "$(med RPS "$case,new")" "$(med RPS "${tls_plain[$case]},new")")" \
            "$(med CPU "$case,new")" "$(med P50 "$case,new")" "$(med P99 "$case,new")"
    done
    printf '\n| TLS handshakes (`openssl s_time`, one client, no request) | per second | server CPU µs per handshake |\n|---|---:|---:|\n'
    for case in hs_full hs_resumed; do
        printf '| %s | %s | %s |\n' "${LABEL[$case]}" "$(med RPS "$case,new")" "$(med CPU "$case,new")"
    done
    tls_ratio="$(ratio "$(med RPS tls_repeat,new)" "$(med RPS repeat,new)")"
    AIMS+=("verify over TLS with keep-alive ÷ the same over plain HTTP: $tls_ratio — aim ≥ 0.80: $(verdict "$(( $(hundredths "$tls_ratio") >= 80 ))")")
    printf '\n## DPoP (new binary only)\n\n'
    printf '| case | req/s | ÷ the same with a bearer token | server CPU µs/response | p50 µs | p99 µs |\n'
    printf '|---|---:|---:|---:|---:|---:|\n'
    declare -A dpop_plain=([dpop_verify]=repeat [dpop_gw_post]=gw_post)
    for case in "${DPOP_CASES[@]}"; do
        printf '| %s | %s | %s | %s | %s | %s |\n' "${LABEL[$case]}" "$(med RPS "$case,new")" \
            "$(ratio "$(med RPS "$case,new")" "$(med RPS "${dpop_plain[$case]},new")")" \
            "$(med CPU "$case,new")" "$(med P50 "$case,new")" "$(med P99 "$case,new")"
        extra=$(( $(med CPU "$case,new") - $(med CPU "${dpop_plain[$case]},new") ))
        bound=$(( (15 * ES256_NS + 5000) / 10000 ))
        AIMS+=("${LABEL[$case]}: the proof costs $extra µs CPU/response beyond the bearer case ≤ 1.5 × one ES256 verification = $bound µs: $(verdict "$(( extra <= bound ))")")
    done
    printf '\n## Key rotation under load (new binary only)\n\n'
    printf -- '- `toolgate keys rotate` twice (publish-ahead %s s, gateway `--key-refresh 1`), three segments of %s s of `wrk -t1 -c16` each on the gateway (POST /mcp tools/call), verify and exchange at once, %s s in all\n' \
        "$ROT_AHEAD" "$ROT_SECS" "$ROT_WALL"
    printf -- '- keys signing in turn: %s\n' "${ROT_KIDS[*]}"
    printf -- '- responses, every one 200 (tokens of every key minted so far in each segment): gateway %s, verify %s, exchange %s; non-2xx: 0\n' \
        "${ROT_RESPONSES[gateway]}" "${ROT_RESPONSES[verify]}" "${ROT_RESPONSES[exchange]}"
    printf '\n## Aims (measurements on a shared machine: printed, never enforced)\n\n'
    for a in "${AIMS[@]}"; do printf -- '- %s\n' "$a"; done
    for side in "${SIDES[@]}"; do
        d="$(med CPU "distinct,$side")"
        bound=$(( BARE_CPU + (13 * ES256_NS + 5000) / 10000 ))
        printf -- '- %s: distinct-token verify %s µs CPU/response ≤ bare %s µs + 1.3 × one ES256 verification (%s µs) = %s µs: %s\n' \
            "$side" "$d" "$BARE_CPU" "$ES256_US" "$bound" "$(verdict "$(( d <= bound ))")"
    done
    printf '\nOne ES256 verification: %s µs (criterion, `cargo bench --bench micro -- --exact jose/es256_verify`, or ES256_NS). ' "$ES256_US"
    for side in "${SIDES[@]}"; do
        printf 'Gateway ÷ direct (%s): GET %s, POST %s. ' "$side" \
            "$(ratio "$(med RPS "gw_get,$side")" "$(med RPS direct_get,bare)")" \
            "$(ratio "$(med RPS "gw_post,$side")" "$(med RPS direct_post,bare)")"
    done
    printf '\n\n## Requests/s per round\n\n'
    for case in "${CASES[@]}"; do
        if [[ $case == bare || $case == direct_* ]]; then
            printf -- '- %s: %s\n' "${LABEL[$case]}" "${RPS[$case,bare]% }"
        else
            printf -- '- %s:' "${LABEL[$case]}"
            for side in "${SIDES[@]}"; do printf ' %s %s.' "$side" "${RPS[$case,$side]% }"; done
            printf '\n'
        fi
    done
} >"$RESULTS"

echo
cat "$RESULTS"
