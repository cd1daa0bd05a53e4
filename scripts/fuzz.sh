#!/usr/bin/env bash
# Fuzzes livecast's parsers with libFuzzer (cargo-fuzz), each target for a
# bounded time, and writes the figures to scripts/results/fuzz.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60, every target)
#
# Targets (scripts/fuzz/fuzz_targets/): inbound (client messages), position
# (one position as JSON text), ingest_json and ingest_ndjson (POST /ingest
# bodies), config (environment variables), osmand_params, osmand_json and
# owntracks (the tracker endpoints), chunked (chunked request bodies with
# extensions and trailers). Each asserts invariants, not only
# the absence of panics: see the files.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address). Only the
# stable toolchain exists here, so this runs cargo-fuzz with
# RUSTC_BOOTSTRAP=1, which lets the stable compiler accept them; the
# AddressSanitizer runtime ships with the stable x86_64 Linux toolchain.
# cargo-fuzz itself is installed from crates.io into target/tools on first
# use. Corpora grow in scripts/fuzz/target/corpus/ (kept between runs);
# the seeds in scripts/fuzz/seeds/ are read-only inputs.
#
# A crash stops that target, leaves its input in
# scripts/fuzz/target/artifacts/TARGET/, and makes the script exit 1 after
# the other targets ran; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir scripts/fuzz TARGET FILE
# and turn it into a regression unit test next to the parser.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-60}
shift || true
case $seconds in '' | *[!0-9]*)
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
  ;;
esac
all_targets=(inbound position ingest_json ingest_ndjson config osmand_params osmand_json owntracks chunked)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

fuzz_dir=scripts/fuzz
work=$fuzz_dir/target
results=scripts/results/fuzz.md
CARGO_FUZZ_VERSION=0.13.2

step() { printf '\n==> %s\n' "$*"; }

if ! command -v c++ >/dev/null 2>&1; then
  echo "fuzz: a C++ compiler is needed to build libFuzzer (Debian: apt-get install g++)" >&2
  exit 1
fi
export PATH="$root/target/tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz $CARGO_FUZZ_VERSION into target/tools"
  cargo install --quiet --locked --root "$root/target/tools" "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1

step "building the fuzz targets ($(cargo fuzz --version), $(rustc --version))"
cargo fuzz build --fuzz-dir "$fuzz_dir"

rows=()
failed=()
for target in "${targets[@]}"; do
  step "fuzzing $target for ${seconds}s"
  corpus=$work/corpus/$target
  artifacts=$work/artifacts/$target
  log=$work/logs/$target.log
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  flags=(-max_total_time="$seconds" -timeout=10 -max_len=4096 -print_final_stats=1
    -artifact_prefix="$artifacts/")
  [ "$target" = config ] || flags+=(-dict="$fuzz_dir/json.dict")
  start=$(date +%s)
  status=ok
  # libFuzzer stops itself at max_total_time; the outer timeout is a backstop.
  if ! timeout --kill-after=10 $((seconds + 300)) \
    cargo fuzz run --fuzz-dir "$fuzz_dir" "$target" "$corpus" "$fuzz_dir/seeds/$target" \
    -- "${flags[@]}" >"$log" 2>&1; then
    status=FAILED
    failed+=("$target")
    grep -E 'panicked|ERROR: |SUMMARY|Test unit written' "$log" | head -20 >&2 || true
  fi
  elapsed=$(($(date +%s) - start))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  items=$(find "$corpus" -type f | wc -l)
  rows+=("| \`$target\` | $elapsed | ${runs:-?} | ${speed:-?} | ${cov:-?} | ${ft:-?} | $items | $status |")
  echo "$target: $status, ${runs:-?} runs in ${elapsed}s (${speed:-?}/s), cov ${cov:-?}, ft ${ft:-?}, corpus $items; log $log"
done

mkdir -p "$(dirname "$results")"
{
  echo "# Fuzzing: last run"
  echo
  echo "\`scripts/fuzz.sh $seconds${*:+ $*}\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores,"
  echo "$(rustc --version) with RUSTC_BOOTSTRAP=1, $(cargo fuzz --version), libFuzzer +"
  echo "AddressSanitizer, one process per target. Corpora carried over from earlier"
  echo "runs on this machine, if any, start from scripts/fuzz/target/corpus/."
  echo
  echo "| target | seconds | runs | runs/s | coverage (edges) | features | corpus | result |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
} >"$results"
step "figures written to $results"
cat "$results"

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $work/artifacts/, logs in $work/logs/)" >&2
  exit 1
fi
echo "fuzz: no crash in ${#targets[@]} targets"
