#!/usr/bin/env bash
# Fuzzes every parser a guest or a client can reach (fuzz/fuzz_targets/):
# each target runs SECONDS (default 15) with libFuzzer, inputs up to 4 KiB
# from the start; any crash, hang or leak fails the run (the input is kept
# in fuzz/artifacts/). Needs the nightly toolchain; installs cargo-fuzz.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
secs="${1:-15}"
shift || true
rustup toolchain list | grep -q '^nightly' || die "fuzzing needs the nightly toolchain (rustup toolchain install nightly)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz"
  cargo install cargo-fuzz --locked -q
fi
cd fuzz
step "building the fuzz targets"
cargo +nightly fuzz build -O 2>&1 | grep -v '^\s*Compiling' >&2 || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for t in "${targets[@]}"; do
  log=$(mktemp)
  if ! cargo +nightly fuzz run -O "$t" -- -max_total_time="$secs" -len_control=0 -max_len=4096 \
      -timeout=10 >"$log" 2>&1; then
    tail -30 "$log" >&2
    rm -f "$log"
    die "fuzz target $t failed (input saved under fuzz/artifacts/$t/)"
  fi
  echo "fuzz $t: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)"
  rm -f "$log"
done
