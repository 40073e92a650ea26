#!/usr/bin/env bash
# Fuzzes every parser a guest or a client can reach (fuzz/fuzz_targets/):
# each target runs SECONDS (default 15) with libFuzzer, inputs up to 4 KiB
# from the start (16 KiB for the migration stream, whose memory runs carry
# whole 4 KiB pages); any crash, hang or leak fails the run (the input is kept
# in fuzz/artifacts/). Installs cargo-fuzz; builds with the stable
# toolchain (RUSTC_BOOTSTRAP=1 lets it take the sanitizer flags).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 3600    # the long campaign: each target
#                                              # until 10M runs or an hour
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
secs="${1:-15}"
shift || true
export RUSTC_BOOTSTRAP=1
runs=()
[ -z "${FUZZ_RUNS:-}" ] || runs=(-runs="$FUZZ_RUNS")
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz"
  (cd / && cargo install cargo-fuzz --locked -q) # without this tree's static-link config
fi
cd fuzz
step "building the fuzz targets"
cargo fuzz build -O 2>&1 | grep -v '^\s*Compiling' >&2 || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for t in "${targets[@]}"; do
  log=$(mktemp)
  # Seed inputs (fuzz/seeds/TARGET, committed) start the corpus where
  # random bytes rarely get: valid queues carrying valid requests.
  max_len=4096
  [ "$t" != migration_stream ] || max_len=16384
  seeds=()
  [ -d "seeds/$t" ] && seeds=("corpus/$t" "seeds/$t") && mkdir -p "corpus/$t"
  if ! cargo fuzz run -O "$t" "${seeds[@]}" -- -max_total_time="$secs" "${runs[@]}" -len_control=0 -max_len="$max_len" \
      -timeout=10 >"$log" 2>&1; then
    tail -30 "$log" >&2
    rm -f "$log"
    die "fuzz target $t failed (input saved under fuzz/artifacts/$t/)"
  fi
  echo "fuzz $t: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)," \
    "coverage $(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2) edges," \
    "corpus $(grep -Eo 'corp: [0-9]+' "$log" | tail -1 | cut -d' ' -f2) inputs"
  rm -f "$log"
done
