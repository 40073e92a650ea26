#!/usr/bin/env bash
# Consolidation benchmark (issue 17 §1): three guests, each a small server
# whose load takes about TARGET % (default 30) of one host CPU when it runs
# alone, first each alone, then all three together on one CPU; per guest
# requests/s and latency measured from outside, host utilization from the
# host manager's accounting and /proc/stat. Writes
# benches/results/consolidation.md, .png and .json. Runs inside the nested
# test host (one CPU: that CPU is "the host CPU"); where /dev/kvm can boot
# Linux it runs directly, the guests pinned to CPU $CPU (default 1).
#   RATE=10 TARGET=30 WINDOW=60 WARMUP=5 benches/consolidation.sh   # the defaults
#   WINDOW=8 WARMUP=2 benches/consolidation.sh   # a quick trial
#   WORK=N benches/consolidation.sh     # skip the calibration: N rounds a request
#   NOTE="..." benches/consolidation.sh # a sentence for the results file
#   OUT=consolidation-x benches/consolidation.sh  # other result file names
# KVM's halt polling is off for the run (HALT_POLL_NS=0, restored after; an
# empty HALT_POLL_NS leaves it as it is): a halted vCPU that polls spends
# host CPU waiting, which the accounting would charge to an idle guest, and
# KVM polls only while nothing else is runnable, so a guest would cost more
# alone than beside others.
# CONDO_CACHE says where the guest artifacts and the test host are built
# (guest/lib.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
rate="${RATE:-10}" target="${TARGET:-30}" window="${WINDOW:-60}" warmup="${WARMUP:-5}" halt_poll="${HALT_POLL_NS-0}"
bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
cargo build --release --locked -q -p condo -p condo-bench
condo_bin="$BUILD/release/condo"
bench_bin="$BUILD/release/condo-bench"
args=(consolidation --condo "$condo_bin" --kernel "$CONDO_GUEST_VMLINUX" --initrd "$CONDO_GUEST_INITRAMFS"
      --rate "$rate" --target-pct "$target" --window-s "$window" --warmup-s "$warmup")
[ -z "${WORK:-}" ] || args+=(--work "$WORK")
[ -z "$halt_poll" ] || args+=(--halt-poll-ns "$halt_poll")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if bash testhost/kvm-ok; then
  cpu="${CPU:-1}"
  where="directly on this host's /dev/kvm, the guests pinned to CPU $cpu"
  "$bench_bin" "${args[@]}" --cpu "$cpu" --dir /var/tmp/condo-consolidation | tee "$out"
else
  where="inside the nested test host (QEMU TCG L1 with emulated SVM, 1 CPU, 4096 MiB)"
  bash testhost/build.sh
  bash testhost/run --mem 4096 --cpus 1 --timeout 3600 --file "$condo_bin" --file "${condo_bin}-vmm" --file "$bench_bin" \
    --file "$CONDO_GUEST_VMLINUX" --file "$CONDO_GUEST_INITRAMFS" --file "$(command -v ip)" \
    -- "$bench_bin" "${args[@]}" --dir /var/consolidation | tee "$out"
fi
results=benches/results
name="${OUT:-consolidation}"
case "$name" in */* | "") die "OUT is a file name without a directory" ;; esac
line=$(grep -a '^@@consolidation-result ' "$out" | tail -1 | tr -d '\r') ||
  die "the benchmark printed no result"
printf '%s\n' "${line#@@consolidation-result }" > "$results/$name.json"
"$bench_bin" consolidation-report --in "$results/$name.json" --md "$results/$name.md" \
  --png "$results/$name.png" --where "$where" \
  --note "${NOTE:-}" --command "RATE=$rate TARGET=$target WINDOW=$window WARMUP=$warmup${WORK:+ WORK=$WORK}${halt_poll:+ HALT_POLL_NS=$halt_poll}${OUT:+ OUT=$OUT} benches/consolidation.sh"
cat "$results/$name.md"
