#!/usr/bin/env bash
# Builds the Debian package and prints its path,
# target/debian/livecast_<version>_<arch>.deb.
#
# One release build: `cargo build --release`, then the built binary writes
# the commented environment file (livecast --env-file, from the same table
# as --help) to target/livecast.env, then `cargo deb --no-build` packs the
# binary, that file, the unit scripts/ops/livecast.service and the
# maintainer scripts of scripts/deb/ (metadata: Cargo.toml,
# [package.metadata.deb]). Installs cargo-deb from crates.io when missing.
#
# Extra arguments go to cargo deb, e.g. --deb-version 0.1.0+site1 or
# --output DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "==> installing cargo-deb (cargo install cargo-deb --locked)" >&2
  cargo install cargo-deb --locked >&2
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bin livecast >&2
mkdir -p target
"$target/release/livecast" --env-file > target/livecast.env.tmp
mv target/livecast.env.tmp target/livecast.env
# cargo deb prints the package's path as its last line of stdout.
cargo deb --no-build "$@" | tail -n 1
