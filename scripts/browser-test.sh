#!/usr/bin/env bash
# The browser tests: a real headless Chromium against the real livecast.
# dashboard.test.mjs (issue 6) opens the built-in dashboard, posts positions
# and checks the page's DOM, across a server restart, in tokens mode and with
# `livecast --demo`; client.test.mjs (issue 14) drives the client library
# /livecast.js from a page on another origin through a drain, a restart, a
# stopped server, error frames and a revoked token; nginx.test.mjs loads the
# dashboard through a real nginx running the operator kit's snippet
# (scripts/ops/nginx-livecast.conf); then the dashboard and the client
# library once more with TLS (LIVECAST_TLS=1: https:// and wss://). Screenshots:
# target/browser-test/*.png; the README's scripts/dashboard.png is written
# when missing, or refreshed with LIVECAST_UPDATE_SCREENSHOT=1.
#
# Installs what it needs: Debian's chromium and nginx (when missing and we
# are root), playwright-core from npm (tests/browser, locked).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# CHROMIUM may name another Chromium; Debian's is installed only when it is
# the one asked for.
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
    if [ "$CHROMIUM" = /usr/bin/chromium ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        step "installing Debian's chromium"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "browser-test: $CHROMIUM is missing: install Debian's chromium" \
             "(as root: apt-get install chromium), or point CHROMIUM at a Chromium" >&2
        exit 1
    fi
fi
# The nginx test runs Debian's nginx on a loopback port with the operator
# kit's snippet; installed like Chromium when it is the one asked for.
NGINX=${NGINX:-/usr/sbin/nginx}
if [ ! -x "$NGINX" ]; then
    if [ "$NGINX" = /usr/sbin/nginx ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        step "installing Debian's nginx"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    else
        echo "browser-test: $NGINX is missing: install Debian's nginx" \
             "(as root: apt-get install nginx-light), or point NGINX at an nginx" >&2
        exit 1
    fi
fi
for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
        echo "browser-test: $tool is missing; install Node.js 20 or later" >&2
        exit 1
    fi
done
if ! command -v openssl >/dev/null; then
    echo "browser-test: openssl is missing (the nginx test makes a certificate with it)" >&2
    exit 1
fi

step "npm ci (tests/browser: playwright-core)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

step "cargo build"
cargo build --locked --bin livecast

step "browser test ($("$CHROMIUM" --version 2>/dev/null | head -n1))"
export CHROMIUM NGINX
# One file at a time: each starts its own servers and Chromium.
node --test --test-reporter=spec --test-concurrency=1 \
    tests/browser/dashboard.test.mjs tests/browser/client.test.mjs tests/browser/nginx.test.mjs

# Once more with TLS: https:// and wss:// (a self-signed pair made by the
# harness; Chromium with --ignore-certificate-errors).
step "browser test with TLS"
LIVECAST_TLS=1 node --test --test-reporter=spec --test-concurrency=1 \
    tests/browser/dashboard.test.mjs tests/browser/client.test.mjs
