#!/usr/bin/env bash
# The one test command (README, .ci/run): formatting, lints, docs, and every
# unit and integration test, from a clean clone on a fresh machine. The
# workspace's tool packages (scripts/loadgen) are built, linted and
# unit-tested with the server (`--workspace`).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# The Redis tests run their own private redis-server on free ports; they
# need the binary. Install Debian's package when it is missing and we may.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is required by the tests: install it (Debian: apt-get install redis-server)" >&2
    exit 1
  fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "cargo test --workspace"
cargo test --workspace --locked

step "Debian package: build and check it; install, upgrade, purge it on a disposable machine (CI)"
scripts/package-test.sh

step "WebSocket conformance (Autobahn; skipped, and said so, without a Python 2.7)"
scripts/autobahn.sh --allow-skip

step "browser test (headless Chromium)"
scripts/browser-test.sh
