#!/usr/bin/env bash
# Runs the Autobahn WebSocket conformance suite (wstest -m fuzzingclient)
# against livecast's own acceptor, handshake and connection loop with the
# echo handler plugged in (the livecast-echo binary), then summarises the
# report and fails on any FAILED case.
#
#   scripts/autobahn.sh [--allow-skip] [--record]
#
#   --allow-skip  without a Python 2.7, say so and exit 0 (the test command
#                 passes it); without it, a missing Python 2.7 is an error
#   --record      also write the summary to scripts/results/autobahn.md
#
# wstest runs only on Python 2.7. It is looked for in $AUTOBAHN_PYTHON27,
# pyenv's versions (pyenv root, ~/.pyenv), then python2.7 / python2 on PATH.
# A Python 3 with pip ($AUTOBAHN_PYTHON3, else python3.11 .. python3) gets
# virtualenv<20.22, the last series that can still create a 2.7
# environment; that environment, with the pinned autobahntestsuite of
# scripts/autobahn/requirements-py27.txt, is cached in target/autobahn/ so
# that re-runs start at once. Excluded cases and their reasons:
# scripts/autobahn/fuzzingclient.json. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

allow_skip=false
record=false
for arg in "$@"; do
  case $arg in
    --allow-skip) allow_skip=true ;;
    --record) record=true ;;
    *)
      echo "usage: scripts/autobahn.sh [--allow-skip] [--record]" >&2
      exit 2
      ;;
  esac
done

started=$(date +%s)
work=$root/target/autobahn
spec_template=scripts/autobahn/fuzzingclient.json
requirements=scripts/autobahn/requirements-py27.txt
step() { printf '\n==> %s\n' "$*"; }
say() { echo "autobahn: $*" >&2; }

# --- a Python 2.7 for wstest -------------------------------------------------
is_py27() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; }
find_py27() {
  local candidates=() pyenv_root
  [ -n "${AUTOBAHN_PYTHON27:-}" ] && candidates+=("$AUTOBAHN_PYTHON27")
  pyenv_root=$( (command -v pyenv >/dev/null 2>&1 && pyenv root) || echo "$HOME/.pyenv")
  for dir in "$pyenv_root"/versions/2.7*; do
    [ -d "$dir" ] && candidates+=("$dir/bin/python2.7")
  done
  for name in python2.7 python2; do
    command -v "$name" >/dev/null 2>&1 && candidates+=("$(command -v "$name")")
  done
  for py in "${candidates[@]}"; do
    if is_py27 "$py"; then
      echo "$py"
      return 0
    fi
  done
  return 1
}
if ! py27=$(find_py27); then
  why="no Python 2.7 found (looked at \$AUTOBAHN_PYTHON27, pyenv's versions/2.7*, python2.7 and python2 on PATH); wstest runs only on Python 2.7"
  if $allow_skip; then
    echo
    echo "************************************************************************"
    echo "autobahn: SKIPPED the WebSocket conformance suite: $why."
    echo "autobahn: install one (e.g. pyenv install 2.7.18) to run it."
    echo "************************************************************************"
    exit 0
  fi
  say "$why (pass --allow-skip to skip)"
  exit 1
fi

# --- wstest in a cached virtualenv --------------------------------------------
venv=$work/py27
stamp=$venv/.livecast-requirements
if ! { [ -x "$venv/bin/wstest" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; }; then
  step "creating the wstest environment in target/autobahn/py27 ($("$py27" --version 2>&1))"
  py3=
  for name in ${AUTOBAHN_PYTHON3:-} python3.11 python3.10 python3.9 python3.8 python3; do
    if command -v "$name" >/dev/null 2>&1 && "$name" -m pip --version >/dev/null 2>&1; then
      py3=$(command -v "$name")
      break
    fi
  done
  if [ -z "$py3" ]; then
    say "a Python 3 with pip is needed to install virtualenv<20.22 (or set AUTOBAHN_PYTHON3)"
    exit 1
  fi
  tools=$work/virtualenv
  rm -rf "$tools" "$venv"
  PIP_ROOT_USER_ACTION=ignore "$py3" -m pip install --quiet --disable-pip-version-check --target "$tools" 'virtualenv<20.22'
  PYTHONPATH=$tools "$py3" -m virtualenv --quiet --python "$py27" "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-python-version-warning \
    -r "$requirements"
  cp "$requirements" "$stamp"
fi

# --- livecast-echo on a free loopback port ---------------------------------------
step "cargo build --release --bin livecast-echo"
cargo build --release --locked --quiet --bin livecast-echo

port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run=$work/run
rm -rf "$run"
mkdir -p "$run"
echo_pid=
cleanup() {
  if [ -n "$echo_pid" ] && kill -0 "$echo_pid" 2>/dev/null; then
    kill "$echo_pid" 2>/dev/null || true
    wait "$echo_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
LIVE_WS_HOST=127.0.0.1 LIVE_WS_PORT=$port HTTP_HOST=127.0.0.1 HTTP_PORT=0 LOG_LEVEL=warn \
  target/release/livecast-echo >"$run/livecast-echo.log" 2>&1 &
echo_pid=$!
for _ in $(seq 100); do
  grep -q 'listening on' "$run/livecast-echo.log" && break
  kill -0 "$echo_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q 'listening on' "$run/livecast-echo.log"; then
  say "livecast-echo did not start:"
  cat "$run/livecast-echo.log" >&2
  exit 1
fi

# --- the suite -------------------------------------------------------------------
sed -e "s|@URL@|ws://127.0.0.1:$port|" -e "s|@OUTDIR@|$run/reports/servers|" \
  "$spec_template" >"$run/fuzzingclient.json"
step "wstest -m fuzzingclient against ws://127.0.0.1:$port (livecast-echo, pid $echo_pid)"
suite_started=$(date +%s)
# The full suite takes well under a minute; the timeout only bounds a hang.
(cd "$run" && timeout --kill-after=10 900 "$venv/bin/wstest" -m fuzzingclient \
  -s "$run/fuzzingclient.json" >"$run/wstest.log" 2>&1) || {
  say "wstest failed or timed out (exit $?): tail of $run/wstest.log:"
  tail -20 "$run/wstest.log" >&2
  exit 1
}
suite_seconds=$(($(date +%s) - suite_started))

# The server must have survived the suite and released every connection
# thread (ws-xxxxxxxx) once the suite's connections are gone.
if ! kill -0 "$echo_pid" 2>/dev/null; then
  say "livecast-echo died during the suite:"
  tail -20 "$run/livecast-echo.log" >&2
  exit 1
fi
ws_threads() { cat /proc/"$echo_pid"/task/*/comm 2>/dev/null | grep -c '^ws-' || true; }
for _ in $(seq 100); do
  [ "$(ws_threads)" -eq 0 ] && break
  sleep 0.1
done
left=$(ws_threads)

step "summary (report: $run/reports/servers/index.html)"
status=0
python3 scripts/autobahn/summarise.py "$run/fuzzingclient.json" \
  "$run/reports/servers/index.json" "$run/summary.md" || status=1
if [ "$left" -ne 0 ]; then
  say "FAILED: $left ws- connection threads still alive 10 s after the suite"
  status=1
fi
total_seconds=$(($(date +%s) - started))
{
  echo
  echo "Suite run time ${suite_seconds} s; whole script ${total_seconds} s" \
    "(build and environment included). ws- threads left after the suite: $left."
  echo "wstest $("$venv/bin/pip" show autobahntestsuite 2>/dev/null | sed -n 's/^Version: //p')" \
    "on $("$py27" --version 2>&1), livecast-echo built from $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
    "$(date -u '+%Y-%m-%d')."
} | tee -a "$run/summary.md"
if $record; then
  mkdir -p scripts/results
  {
    echo "# Autobahn conformance: last recorded run"
    echo
    echo "\`scripts/autobahn.sh --record\`"
    echo
    cat "$run/summary.md"
  } >scripts/results/autobahn.md
  echo "recorded in scripts/results/autobahn.md"
fi
if [ "$status" -ne 0 ]; then
  say "FAILED"
  exit 1
fi
echo "autobahn: passed (no FAILED case)"
