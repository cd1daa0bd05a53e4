#!/usr/bin/env bash
# TLS against plain TCP in one run: the `small-fleet` load of scripts/bench.sh
# (100 clients, 500 devices, 500 POSTs/s of one position), once on a plain
# livecast and once on a livecast with TLS_CERT_FILE/TLS_KEY_FILE, and the
# server's CPU per delivery of each.
#
# The load generator speaks plain WebSocket, so in both runs its clients go
# through a local socat relay: to the plain port as TCP, to the TLS port as a
# TLS client (socat's OpenSSL). The relay adds the same hop to both runs and
# runs in processes of its own: the CPU figures are livecast's alone
# (/proc/PID of the server). Ingest stays plain (HTTP_TLS=off) so that the
# difference is the WebSocket side: every delivery encrypted per connection.
#
# Needs: openssl, socat. Environment: TLS_BENCH_S [15] seconds per run,
# TLS_BENCH_RUNS [1] rounds (plain then TLS in each), BENCH_WS_PORT [18080],
# BENCH_HTTP_PORT [19090].
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_RUN=${TLS_BENCH_S:-15}
RUNS=${TLS_BENCH_RUNS:-1}
WS_PORT=${BENCH_WS_PORT:-18080}
HTTP_PORT=${BENCH_HTTP_PORT:-19090}
RELAY_PORT=$((WS_PORT + 1))
OUT=$ROOT/target/bench-tls
mkdir -p "$OUT"

for tool in openssl socat; do
    command -v "$tool" >/dev/null || { echo "bench-tls: $tool is missing" >&2; exit 1; }
done

cargo build --release --locked --bin livecast >&2
cargo build --release --locked -p livecast-loadgen >&2
LIVECAST=$ROOT/target/release/livecast
LOADGEN=$ROOT/target/release/loadgen

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

SERVER_PID="" RELAY_PID=""
cleanup() {
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

run() { # plain|tls
    local mode=$1 tls_env=() relay_to
    if [ "$mode" = tls ]; then
        tls_env=(TLS_CERT_FILE="$OUT/cert.pem" TLS_KEY_FILE="$OUT/key.pem" HTTP_TLS=off)
        relay_to="OPENSSL:127.0.0.1:$WS_PORT,verify=0"
    else
        relay_to="TCP:127.0.0.1:$WS_PORT"
    fi
    env LIVE_WS_HOST=127.0.0.1 LIVE_WS_PORT="$WS_PORT" HTTP_HOST=127.0.0.1 \
        HTTP_PORT="$HTTP_PORT" LOG_LEVEL=warn LIVE_WS_MAX_PENDING_PER_IP=100000 LIVE_WS_MAX_CONNECTIONS_PER_IP=0 \
        HTTP_MAX_CONNECTIONS_PER_IP=100000 "${tls_env[@]}" "$LIVECAST" \
        >"$OUT/livecast-$mode.log" 2>&1 &
    SERVER_PID=$!
    socat "TCP-LISTEN:$RELAY_PORT,fork,reuseaddr,backlog=1024" "$relay_to" \
        2>"$OUT/socat-$mode.log" &
    RELAY_PID=$!
    for _ in $(seq 100); do
        port_busy "$WS_PORT" && port_busy "$HTTP_PORT" && port_busy "$RELAY_PORT" && break
        sleep 0.1
    done
    sleep 0.3
    "$LOADGEN" --ws "ws://127.0.0.1:$RELAY_PORT/" --http "http://127.0.0.1:$HTTP_PORT" \
        --server-pid "$SERVER_PID" --server-name "livecast-$mode" --scenario small-fleet-tls \
        --clients 100 --events 1 --devices 500 --rate 500 --batch 1 \
        --duration "$SECONDS_PER_RUN" --quiet 2>>"$OUT/loadgen-$mode.txt" | tee -a "$OUT/raw.jsonl"
    kill "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    RELAY_PID="" SERVER_PID=""
    sleep 0.5
}

: >"$OUT/raw.jsonl"
for _ in $(seq "$RUNS"); do
    run plain
    run tls
done
echo "raw results: $OUT/raw.jsonl" >&2
