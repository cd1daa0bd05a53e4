#!/usr/bin/env bash
# Soak run: the release server under a steady fan-out load with continuous
# connection churn, sampled every few seconds; fails if RSS, threads, open
# fds or queue depths grow without bound, or if any well-behaved client
# misses a position. Writes scripts/results/soak.md (verdict and figures) and
# scripts/results/soak-samples.csv.
#
#   scripts/soak.sh [MINUTES]            (default 10)
#
# Knobs (environment): SOAK_CLIENTS (200 subscribers), SOAK_EVENTS (4),
# SOAK_DEVICES (25 per event), SOAK_RATE (100 positions/s), SOAK_CHURN
# (10 connections/s), SOAK_SAMPLE (5 s), SOAK_WARMUP (a tenth of the run,
# at least 30 s), SOAK_PING_MS (server ping interval, 5000 so that the
# heartbeat runs many times). Loopback only; it stops by itself and kills
# what it started. The load driver is scripts/soak/ (Rust, its own Cargo
# project).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

minutes=${1:-10}
case $minutes in '' | *[!0-9]*)
  echo "usage: scripts/soak.sh [MINUTES]" >&2
  exit 2
  ;;
esac
[ "$minutes" -ge 1 ] || {
  echo "soak: at least 1 minute" >&2
  exit 2
}

work=$root/target/soak
results=scripts/results
mkdir -p "$work" "$results"
step() { printf '\n==> %s\n' "$*"; }

step "cargo build --release (livecast and the soak driver)"
cargo build --release --locked --quiet --bin livecast
cargo build --release --locked --quiet --manifest-path scripts/soak/Cargo.toml \
  --target-dir "$work/driver-target"

server_pid=
driver_pid=
cleanup() {
  for pid in $driver_pid $server_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "starting livecast on free loopback ports"
# Only what the soak needs is set; everything else is livecast's default
# (no Redis, no auth, queue of 64 batches, 1 MiB back-pressure threshold).
env -i PATH="$PATH" HOME="${HOME:-/root}" \
  LIVE_WS_HOST=127.0.0.1 LIVE_WS_PORT=0 HTTP_HOST=127.0.0.1 HTTP_PORT=0 \
  LIVE_WS_PING_INTERVAL_MS="${SOAK_PING_MS:-5000}" LOG_LEVEL=info \
  target/release/livecast >"$work/livecast.out" 2>"$work/livecast.err" &
server_pid=$!
ws= http=
for _ in $(seq 100); do
  ws=$(sed -n 's|^ *WebSocket: ws://\([^/]*\)/.*|\1|p' "$work/livecast.out")
  http=$(sed -n 's|^ *HTTP: *http://\([^/]*\)/.*|\1|p' "$work/livecast.out")
  [ -n "$ws" ] && [ -n "$http" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ws" ] || [ -z "$http" ]; then
  echo "soak: livecast did not start:" >&2
  cat "$work/livecast.out" "$work/livecast.err" >&2
  exit 1
fi
echo "livecast pid $server_pid: ws://$ws/ http://$http/ (logs in target/soak/)"

step "soak for $minutes min"
seconds=$((minutes * 60))
status=0
# The driver stops by itself after the load plus at most ~1 min of ramp-up
# and drain; the timeout is a backstop.
timeout --kill-after=10 $((seconds + 300)) \
  "$work/driver-target/release/livecast-soak" \
  --ws "$ws" --http "$http" --pid "$server_pid" --seconds "$seconds" \
  --clients "${SOAK_CLIENTS:-200}" --events "${SOAK_EVENTS:-4}" \
  --devices "${SOAK_DEVICES:-25}" --rate "${SOAK_RATE:-100}" \
  --churn "${SOAK_CHURN:-10}" --sample "${SOAK_SAMPLE:-5}" \
  ${SOAK_WARMUP:+--warmup "$SOAK_WARMUP"} \
  --server "livecast $(git rev-parse --short HEAD 2>/dev/null || echo '?'), release build, $(nproc) cores, LIVE_WS_PING_INTERVAL_MS=${SOAK_PING_MS:-5000}" \
  --out "$results/soak.md" --csv "$results/soak-samples.csv" &
driver_pid=$!
wait "$driver_pid" || status=$?
driver_pid=

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "soak: livecast died during the run; its stderr:" >&2
  tail -20 "$work/livecast.err" >&2
  status=1
fi
if grep -q 'signal .*: stopping' "$work/livecast.err"; then
  echo "soak: livecast was stopped by a signal from outside this script during the run:" >&2
  grep 'signal .*: stopping' "$work/livecast.err" >&2
  status=1
fi
if grep -qv ' INFO ' "$work/livecast.err"; then
  echo "livecast's warnings and errors (target/soak/livecast.err):"
  grep -v ' INFO ' "$work/livecast.err" | tail -5
fi
if [ "$status" -ne 0 ]; then
  echo "soak: FAILED (see $results/soak.md)" >&2
  exit 1
fi
echo "soak: passed; figures in $results/soak.md"
