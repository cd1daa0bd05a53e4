#!/usr/bin/env bash
# livecast's benchmark: every scenario of issues 5 and 13 against livecast
# and the two reference servers of the same protocol (scripts/bench/tokio-ref,
# scripts/bench/node-ref), on loopback, the server pinned to CPU 0 and the
# load generator (scripts/loadgen/, a member of the workspace) to CPU 1.
#
#   scripts/bench.sh                  full run (about 15 minutes)
#   BENCH_QUICK=1 scripts/bench.sh    smoke run (about 3 minutes)
#
# Writes scripts/bench/results.md (quick runs: results-quick.md) with the
# date, machine, its thread wake-up floor (scripts/bench/switch_cost.rs) and
# exact commands, and the raw JSON lines of every run to
# scripts/bench/results/raw/ (not committed).
#
# Environment (defaults in brackets are the full run's):
#   BENCH_SERVERS      servers to measure [livecast tokio-ref node-ref]
#   BENCH_SCENARIOS    scenarios to run [small-fleet fanout-25 fanout-100
#                      ramp-single ramp many-events idle storm slow trackers]
#   BENCH_WS_PORT, BENCH_HTTP_PORT   loopback ports [18480, 18490]
#   BENCH_OUT          Markdown file to write
#   BENCH_P99_LIMIT_MS ramp: a step is clean when p99 <= this [50]
#   BENCH_POSTS_PER_S  POSTs per second; each carries rate/this positions [50]
#                      (ramp, many-events, slow; the others post one
#                      position per POST)
#   BENCH_POSTERS      the load generator's posting connections [2]
#   SMALL_CLIENTS [100] SMALL_DEVICES [500] SMALL_RATE [500] SMALL_S [15]
#   FANOUT_CLIENTS [1000] FANOUT_DEVICES [100] FANOUT_S [15]
#   RAMP_CLIENTS [1000] RAMP_DEVICES [100] RAMP_STEP_S [10]
#   RAMP_START_RATE [25] (positions/s; deliveries/s = rate x clients)
#   RAMP_MAX_STEPS [10] RAMP_BISECT [2]
#   MANY_CLIENTS [1000] MANY_EVENTS [10] MANY_DEVICES [1000]
#   MANY_RATE [1000] MANY_S [30] MANY_PROBES [10]
#   IDLE_CLIENTS [5000] IDLE_S [60]
#   STORM_CLIENTS [2000]
#   SLOW_CLIENTS [500] SLOW_RATE [100] SLOW_S [20] SLOW_BALLAST [2000000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/scripts/bench

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  : "${SMALL_S:=4}" "${FANOUT_S:=4}"
  : "${RAMP_CLIENTS:=500}" "${RAMP_STEP_S:=2}" "${RAMP_START_RATE:=50}" "${RAMP_MAX_STEPS:=3}"
  : "${RAMP_BISECT:=0}" "${RAMP_FACTOR:=4}"
  : "${MANY_CLIENTS:=500}" "${MANY_RATE:=500}" "${MANY_S:=4}" "${MANY_PROBES:=5}"
  : "${IDLE_CLIENTS:=1000}" "${IDLE_S:=4}"
  : "${STORM_CLIENTS:=1000}"
  : "${SLOW_CLIENTS:=200}" "${SLOW_RATE:=50}" "${SLOW_S:=5}"
  : "${BENCH_OUT:=$BENCH/results-quick.md}"
fi
SERVERS=${BENCH_SERVERS:-livecast tokio-ref node-ref}
SCENARIOS=${BENCH_SCENARIOS:-small-fleet fanout-25 fanout-100 ramp-single ramp many-events idle storm slow trackers}
WS_PORT=${BENCH_WS_PORT:-18480}
HTTP_PORT=${BENCH_HTTP_PORT:-18490}
OUT=${BENCH_OUT:-$BENCH/results.md}
P99_LIMIT=${BENCH_P99_LIMIT_MS:-50}
POSTS_PER_S=${BENCH_POSTS_PER_S:-50}
POSTERS=${BENCH_POSTERS:-2}
SMALL_CLIENTS=${SMALL_CLIENTS:-100}
SMALL_DEVICES=${SMALL_DEVICES:-500}
SMALL_RATE=${SMALL_RATE:-500}
SMALL_S=${SMALL_S:-15}
FANOUT_CLIENTS=${FANOUT_CLIENTS:-1000}
FANOUT_DEVICES=${FANOUT_DEVICES:-100}
FANOUT_S=${FANOUT_S:-15}
RAMP_CLIENTS=${RAMP_CLIENTS:-1000}
RAMP_DEVICES=${RAMP_DEVICES:-100}
RAMP_STEP_S=${RAMP_STEP_S:-10}
RAMP_START_RATE=${RAMP_START_RATE:-25}
RAMP_MAX_STEPS=${RAMP_MAX_STEPS:-10}
RAMP_BISECT=${RAMP_BISECT:-2}
RAMP_FACTOR=${RAMP_FACTOR:-2}
MANY_CLIENTS=${MANY_CLIENTS:-1000}
MANY_EVENTS=${MANY_EVENTS:-10}
MANY_DEVICES=${MANY_DEVICES:-1000}
MANY_RATE=${MANY_RATE:-1000}
MANY_S=${MANY_S:-30}
MANY_PROBES=${MANY_PROBES:-10}
IDLE_CLIENTS=${IDLE_CLIENTS:-5000}
IDLE_S=${IDLE_S:-60}
STORM_CLIENTS=${STORM_CLIENTS:-2000}
SLOW_CLIENTS=${SLOW_CLIENTS:-500}
SLOW_RATE=${SLOW_RATE:-100}
SLOW_S=${SLOW_S:-20}
SLOW_BALLAST=${SLOW_BALLAST:-2000000}

RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
RAW_DIR=$BENCH/results/raw
RAW=$RAW_DIR/$RUN_ID.jsonl
LOGS=$RAW_DIR/$RUN_ID-logs
COMMANDS=$LOGS/commands.txt
mkdir -p "$LOGS"
: >"$RAW"
: >"$COMMANDS"

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# ---- pinning --------------------------------------------------------------
SERVER_PIN=()
LOADGEN_PIN=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  SERVER_PIN=(taskset -c 0)
  LOADGEN_PIN=(taskset -c 1)
  PINNING="server on CPU 0, load generator on CPU 1 (taskset)"
else
  PINNING="not pinned (needs taskset and 2 CPUs)"
  echo "bench: warning: $PINNING" >&2
fi

# ---- build ----------------------------------------------------------------
say "building livecast and loadgen (release)"
cargo build --release --locked --bin livecast >&2
cargo build --release --locked -p livecast-loadgen >&2
LIVECAST=$ROOT/target/release/livecast
LOADGEN=$ROOT/target/release/loadgen

TOKIO_REF=""
if [[ " $SERVERS " == *" tokio-ref "* ]]; then
  say "building scripts/bench/tokio-ref (release)"
  if cargo build --release --locked --manifest-path "$BENCH/tokio-ref/Cargo.toml" \
      --target-dir "$ROOT/target/bench-tokio-ref" >&2; then
    TOKIO_REF=$ROOT/target/bench-tokio-ref/release/tokio-ref
  else
    echo "bench: tokio-ref did not build: skipped" >&2
  fi
fi
NODE_REF=""
if [[ " $SERVERS " == *" node-ref "* ]]; then
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    say "installing scripts/bench/node-ref (npm ci)"
    if (cd "$BENCH/node-ref" && npm ci --no-audit --no-fund --loglevel=error >&2); then
      NODE_REF=$BENCH/node-ref/server.js
    else
      echo "bench: npm ci failed: node-ref skipped" >&2
    fi
  else
    echo "bench: node/npm not found: node-ref skipped" >&2
  fi
fi
# What waking a thread costs here, with no work at all: the floor under
# every thread-per-connection figure below, recorded with them because it
# differs so much between machines (bare metal, VMs).
say "measuring the wake-up floor (scripts/bench/switch_cost.rs, on the server's CPU)"
WAKE_FLOOR="not measured (rustc failed)"
if rustc -O --edition 2021 "$BENCH/switch_cost.rs" -o "$ROOT/target/switch_cost" >&2; then
  WAKE_FLOOR=$("${SERVER_PIN[@]}" "$ROOT/target/switch_cost" | paste -sd ';' - | sed 's/;/; /g')
  echo "$WAKE_FLOOR" >&2
fi
# Reporting needs node; without it the raw JSON lines are still written.
HAVE_NODE=0
command -v node >/dev/null 2>&1 && HAVE_NODE=1

# ---- servers --------------------------------------------------------------
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() { # name scenario
  local name=$1 log="$LOGS/$1-$2.log"
  for p in "$WS_PORT" "$HTTP_PORT"; do
    port_busy "$p" && die "port $p is in use (set BENCH_WS_PORT / BENCH_HTTP_PORT)"
  done
  case $name in
    livecast)
      # Every load client comes from 127.0.0.1: lift the per-address limits
      # (SPEC §9), which would otherwise answer a connect storm with 503s.
      env LIVE_WS_HOST=127.0.0.1 LIVE_WS_PORT="$WS_PORT" HTTP_HOST=127.0.0.1 \
        HTTP_PORT="$HTTP_PORT" LOG_LEVEL=warn LIVE_WS_MAX_PENDING_PER_IP=100000 LIVE_WS_MAX_CONNECTIONS_PER_IP=0 \
        HTTP_MAX_CONNECTIONS_PER_IP=100000 "${SERVER_PIN[@]}" "$LIVECAST" >"$log" 2>&1 &
      ;;
    tokio-ref)
      env HOST=127.0.0.1 WS_PORT="$WS_PORT" HTTP_PORT="$HTTP_PORT" \
        "${SERVER_PIN[@]}" "$TOKIO_REF" >"$log" 2>&1 &
      ;;
    node-ref)
      env HOST=127.0.0.1 WS_PORT="$WS_PORT" HTTP_PORT="$HTTP_PORT" \
        "${SERVER_PIN[@]}" node "$NODE_REF" >"$log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  local i
  for i in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; die "$name exited at start"; }
    if port_busy "$HTTP_PORT" && port_busy "$WS_PORT"; then
      sleep 0.3 # let the probe connections go away
      return 0
    fi
    sleep 0.1
  done
  die "$name did not listen on $WS_PORT/$HTTP_PORT within 10 s"
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local i
  for i in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  sleep 0.5
}

available() { # server name → is it built?
  case $1 in
    livecast) return 0 ;;
    tokio-ref) [ -n "$TOKIO_REF" ] ;;
    node-ref) [ -n "$NODE_REF" ] ;;
    *) return 1 ;;
  esac
}

# Runs the load generator against the running server; appends its JSON
# line to the raw file and prints it.
LAST_JSON=""
loadgen() { # server scenario args...
  local server=$1 scenario=$2
  shift 2
  # timeout: a safety net only, the load generator bounds its own phases.
  local cmd=(timeout -k 10 300 "${LOADGEN_PIN[@]}" "$LOADGEN" --ws "ws://127.0.0.1:$WS_PORT/"
    --http "http://127.0.0.1:$HTTP_PORT" --server-pid "$SERVER_PID"
    --server-name "$server" --scenario "$scenario" --p99-limit-ms "$P99_LIMIT"
    --posts-per-s "$POSTS_PER_S" --posters "$POSTERS" "$@")
  printf '%s\n' "${cmd[*]:4}" | sed "s|$ROOT/||g; s|--server-pid [0-9]*|--server-pid \$PID|" >>"$COMMANDS"
  LAST_JSON=$("${cmd[@]}" 2>>"$LOGS/loadgen-$server-$scenario.txt") || {
    tail -5 "$LOGS/loadgen-$server-$scenario.txt" >&2
    LAST_JSON=""
    return 1
  }
  tail -n 30 "$LOGS/loadgen-$server-$scenario.txt" | sed -n '/^loadgen report/,$p' | tail -n +2 >&2
  printf '%s\n' "$LAST_JSON" >>"$RAW"
}

is_clean() { [[ "$LAST_JSON" == *'"clean":true'* ]]; }

# ---- scenarios -------------------------------------------------------------
# Fixed-rate runs of issue 13, one position per POST as trackers report:
# `small-fleet` (100 clients, 500 devices, 500 POSTs/s: a modest on-prem
# event) and `fanout-25` / `fanout-100` (1,000 clients at 25 and 100
# POSTs/s: at 25 the POSTs are 40 ms apart, so no flush cadence up to 20 ms
# can merge them and every one costs a wake-up of every client). Each
# reports server CPU, latency, lost/dup/closed; a fresh server per run.
fixed() { # server scenario clients devices rate seconds
  local server=$1 scenario=$2 clients=$3 devices=$4 rate=$5 seconds=$6
  start_server "$server" "$scenario"
  say "$server $scenario: $clients clients, $rate POSTs/s of one position for $seconds s"
  loadgen "$server" "$scenario" --clients "$clients" --events 1 --devices "$devices" \
    --rate "$rate" --batch 1 --duration "$seconds" || true
  stop_server
}

# The fan-out ramp, in two shapes: `ramp-single` posts every position in
# its own POST (POSTs/s = positions/s), as trackers report; `ramp` posts
# $POSTS_PER_S POSTs a second whatever the rate (batches of rate/N), so the
# number of broadcaster cycles stays fixed while the batches grow.
ramp() { # server scenario [loadgen args...]
  local server=$1 scenario=$2 rate=$RAMP_START_RATE steps=0 clean_rate=0 bad_rate=0
  shift 2
  start_server "$server" "$scenario"
  while [ "$steps" -lt "$RAMP_MAX_STEPS" ]; do
    steps=$((steps + 1))
    say "$server $scenario: $rate positions/s x $RAMP_CLIENTS clients"
    loadgen "$server" "$scenario" --clients "$RAMP_CLIENTS" --events 1 --devices "$RAMP_DEVICES" \
      --rate "$rate" --duration "$RAMP_STEP_S" "$@" || break
    if is_clean; then
      clean_rate=$rate
      rate=$((rate * RAMP_FACTOR))
    else
      bad_rate=$rate
      [ "$clean_rate" -gt 0 ] && break
      rate=$((rate / 2)) # not even the first step was clean: go down
      [ "$rate" -ge 1 ] || break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "bench: $server died" >&2; break; }
  done
  local i
  for i in $(seq "$RAMP_BISECT"); do
    [ "$clean_rate" -gt 0 ] && [ "$bad_rate" -gt $((clean_rate + 1)) ] || break
    rate=$(((clean_rate + bad_rate) / 2))
    say "$server $scenario (bisect): $rate positions/s"
    loadgen "$server" "$scenario" --clients "$RAMP_CLIENTS" --events 1 --devices "$RAMP_DEVICES" \
      --rate "$rate" --duration "$RAMP_STEP_S" "$@" || break
    if is_clean; then clean_rate=$rate; else bad_rate=$rate; fi
  done
  stop_server
}

many_events() {
  start_server "$1" many-events
  say "$1 many events"
  loadgen "$1" many-events --clients "$MANY_CLIENTS" --events "$MANY_EVENTS" \
    --devices "$MANY_DEVICES" --rate "$MANY_RATE" --duration "$MANY_S" --probes "$MANY_PROBES" || true
  stop_server
}

idle() {
  start_server "$1" idle
  say "$1 idle: $IDLE_CLIENTS clients for $IDLE_S s"
  loadgen "$1" idle --clients "$IDLE_CLIENTS" --idle --duration "$IDLE_S" || true
  stop_server
}

storm() {
  start_server "$1" storm
  say "$1 connect storm: $STORM_CLIENTS clients"
  loadgen "$1" storm --clients "$STORM_CLIENTS" --idle --duration 0.5 || true
  stop_server
}

slow() {
  start_server "$1" slow
  say "$1 slow client among $SLOW_CLIENTS"
  loadgen "$1" slow --clients "$SLOW_CLIENTS" --slow-clients 1 --slow-ballast "$SLOW_BALLAST" \
    --rate "$SLOW_RATE" --duration "$SLOW_S" || true
  stop_server
}

# `trackers` (livecast only: the references speak no tracker protocol):
# $TRACKERS_N phones each report once a second over a new connection, for
# $TRACKERS_S s per protocol, to POST /ingest, then GET /ingest/osmand?...,
# then POST /ingest/owntracks, on one server; the server's CPU-µs per
# report of each, so the protocols' cost reads against POST /ingest's.
# Writes its own table: scripts/bench/results-trackers.md.
trackers() {
  [ "$1" = livecast ] || return 0
  local n=${TRACKERS_N:-500} s=${TRACKERS_S:-$([ "$QUICK" = 1 ] && echo 3 || echo 15)}
  local out=$BENCH/results-trackers.md table=$LOGS/loadgen-$1-trackers.txt
  start_server "$1" trackers
  say "$1 trackers: $n phones, one report a second each, $s s per protocol"
  printf '%s\n' "loadgen trackers --http http://127.0.0.1:$HTTP_PORT --server-pid \$PID --trackers $n --duration $s" >>"$COMMANDS"
  "${LOADGEN_PIN[@]}" "$LOADGEN" trackers --http "http://127.0.0.1:$HTTP_PORT" --server-pid "$SERVER_PID" \
    --trackers "$n" --duration "$s" --server-name "$1" >>"$RAW_DIR/$RUN_ID-trackers.jsonl" 2>"$table" || true
  cat "$table" >&2
  {
    echo "# Tracker protocols: server CPU per report"
    echo
    [ "$QUICK" = 1 ] && echo "Quick smoke run (\`BENCH_QUICK=1\`): short runs, CPU read in clock ticks (10 ms)." && echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), livecast commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- $n trackers, each one report a second over a new connection, $s s per protocol, one server"
    echo "  (release, LOG_LEVEL=warn, no subscribers); pinning: $PINNING"
    echo "- Server CPU counts every thread: the accept thread, one thread per connection, the broadcaster"
    echo "- Command: \`$( [ "$QUICK" = 1 ] && echo 'BENCH_QUICK=1 ')BENCH_SCENARIOS=trackers BENCH_SERVERS=livecast scripts/bench.sh\`"
    echo
    cat "$table"
  } >"$out"
  stop_server
}

STARTED=$(date +%s)
for scenario in $SCENARIOS; do
  for server in $SERVERS; do
    if ! available "$server"; then continue; fi
    case $scenario in
      small-fleet) fixed "$server" small-fleet "$SMALL_CLIENTS" "$SMALL_DEVICES" "$SMALL_RATE" "$SMALL_S" ;;
      fanout-25) fixed "$server" fanout-25 "$FANOUT_CLIENTS" "$FANOUT_DEVICES" 25 "$FANOUT_S" ;;
      fanout-100) fixed "$server" fanout-100 "$FANOUT_CLIENTS" "$FANOUT_DEVICES" 100 "$FANOUT_S" ;;
      ramp-single) ramp "$server" ramp-single --batch 1 ;;
      ramp) ramp "$server" ramp ;;
      many-events) many_events "$server" ;;
      idle) idle "$server" ;;
      storm) storm "$server" ;;
      slow) slow "$server" ;;
      trackers) trackers "$server" ;;
      *) die "unknown scenario $scenario" ;;
    esac
  done
done
ELAPSED=$(($(date +%s) - STARTED))

# ---- report ---------------------------------------------------------------
say "writing ${OUT#"$ROOT"/}"
MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
{
  echo "# livecast benchmark results"
  echo
  if [ "$QUICK" = 1 ]; then
    echo "Quick smoke run (\`BENCH_QUICK=1\`): small sizes and short steps; see results.md for a full run."
    echo
  fi
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), benchmark took ${ELAPSED} s"
  echo "- Machine: $(nproc) CPUs, ${MODEL:-unknown CPU}, $MEM RAM, Linux $(uname -r)"
  echo "- Software: $(rustc --version 2>/dev/null), node $(node --version 2>/dev/null || echo absent), livecast commit $COMMIT"
  echo "- Pinning: $PINNING; everything on loopback"
  echo "- Wake-up floor on the server's CPU (\`scripts/bench/switch_cost.rs\`): $WAKE_FLOOR"
  echo "- Servers: livecast (release, default settings, LOG_LEVEL=warn); tokio-ref and node-ref from scripts/bench/"
  echo "- Reproduce: \`$( [ "$QUICK" = 1 ] && echo 'BENCH_QUICK=1 ')scripts/bench.sh\` from a clean clone (needs cargo, node and npm)"
  echo
  if [ "$HAVE_NODE" = 1 ]; then
    node "$BENCH/report.js" "$RAW" "$P99_LIMIT"
  else
    echo "(node is missing: no tables; raw results in ${RAW#"$ROOT"/})"
  fi
  echo "### Commands"
  echo
  echo "Servers were started as \`env LIVE_WS_PORT=$WS_PORT HTTP_PORT=$HTTP_PORT LOG_LEVEL=warn ${SERVER_PIN[*]} target/release/livecast\`,"
  echo "\`env WS_PORT=$WS_PORT HTTP_PORT=$HTTP_PORT ${SERVER_PIN[*]} target/bench-tokio-ref/release/tokio-ref\` and"
  echo "\`env WS_PORT=$WS_PORT HTTP_PORT=$HTTP_PORT ${SERVER_PIN[*]} node scripts/bench/node-ref/server.js\`, a fresh one per scenario"
  echo "(one for all the steps of a ramp); then, in order:"
  echo
  echo '```'
  cat "$COMMANDS"
  echo '```'
} >"$OUT"
echo "bench: wrote ${OUT#"$ROOT"/} and ${RAW#"$ROOT"/}" >&2
