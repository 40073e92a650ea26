#!/usr/bin/env bash
# Density benchmark: idle 128 MiB, 1-vCPU guests started through the host
# daemon (one booted, snapshotted, then cloned in batches of BATCH) until
# MAX (default 1000) or the host refuses; the host memory each costs, the
# clone rate, the daemon's RSS and API latency at that count; then as many
# QEMU microvm guests side by side for their per-guest memory. Writes
# benches/results/density.md. Runs directly where /dev/kvm can boot Linux,
# otherwise in the nested test host (TESTHOST_MEM MiB, default 16384;
# TESTHOST_CPUS, default 2).
#   MAX=1000 BATCH=10 benches/density.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
max="${MAX:-1000}" batch="${BATCH:-10}"
bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
cargo build --release --locked -q -p condo -p condo-bench
condo_bin="$BUILD/release/condo"
bench_bin="$BUILD/release/condo-bench"
qemu_bin="$(command -v qemu-system-x86_64)"
args=(density --condo "$condo_bin" --qemu "$qemu_bin" --kernel "$CONDO_GUEST_VMLINUX"
      --initrd "$CONDO_GUEST_INITRAMFS" --max "$max" --batch "$batch")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if bash testhost/kvm-ok; then
  where="directly on this host's /dev/kvm"
  "$bench_bin" "${args[@]}" --dir /var/tmp/condo-density | tee "$out"
else
  mem="${TESTHOST_MEM:-16384}" cpus="${TESTHOST_CPUS:-2}"
  where="inside the nested test host (QEMU TCG L1 with emulated SVM, $cpus CPUs, $mem MiB)"
  bash testhost/build.sh
  bash testhost/run --mem "$mem" --cpus "$cpus" --timeout 7200 --file "$condo_bin" --file "${condo_bin}-vmm" --file "$bench_bin" \
    --file "$CONDO_GUEST_VMLINUX" --file "$CONDO_GUEST_INITRAMFS" \
    --file "$qemu_bin" --file /usr/share/qemu --file /usr/share/seabios \
    -- "$bench_bin" "${args[@]}" --dir /var/density | tee "$out"
fi
val() { grep -o "$1=[^ ]*" "$out" | tail -1 | cut -d= -f2; }
mib() { awk -v k="$1" 'BEGIN { printf "%.2f", k / 1024 }'; }
reason=$(grep -o 'stop_reason=.*' "$out" | head -1 | cut -d= -f2-)
qreason=$(grep -o 'qemu_stop_reason=.* qemu_pss' "$out" | head -1 | sed 's/qemu_stop_reason=//; s/ qemu_pss$//')
cpss=$(val condo_pss_kib_median) qpss=$(val qemu_pss_kib_median)
cdrop=$(val condo_memavailable_drop_kib_per_guest) qdrop=$(val qemu_memavailable_drop_kib_per_guest)
fit=$(awk -v k="$cdrop" 'BEGIN { if (k > 0) printf "%d", 24 * 1024 * 1024 / k; else print "-" }')
ratio() { awk -v c="$1" -v q="$2" 'BEGIN { if (q > 0) printf "%.2f", c / q; else print "-" }'; }
{
  echo "# Density benchmark"
  echo
  echo "Measured $(date -u +%Y-%m-%d) $where, with \`MAX=$max BATCH=$batch benches/density.sh\`"
  echo "(condo $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $("$qemu_bin" --version | head -1))."
  echo "Guests: minimal 6.1 kernel + busybox initramfs, idle (\`condo.end=wait\`), 128 MiB, 1 vCPU, no network."
  echo "condo: \`condo daemon\`, one guest booted and snapshotted, then \`POST /snapshots/base/clone\` in batches of $batch"
  echo "(each clone its own jail process, uid, cgroup and copy-on-write disk; the memory file mapped privately by all)."
  echo "QEMU: as many \`microvm\` processes booted side by side (no snapshot sharing)."
  echo "Per-guest memory: PSS of the VMM process (guest RAM included; condo adds its jail process), median;"
  echo "and the drop of the host's MemAvailable divided by the guests (what the host really gives each, kernel included)."
  echo
  echo "| metric | condo | QEMU microvm | condo / QEMU | target |"
  echo "|---|---|---|---|---|"
  echo "| guests started | $(val condo_running) | $(val qemu_running) | | 1000 or the host's limit |"
  echo "| host memory per guest, PSS | $(mib "$cpss") MiB | $(mib "$qpss") MiB | $(ratio "$cpss" "$qpss") | at most 0.25 |"
  echo "| host memory per guest, MemAvailable drop | $(mib "$cdrop") MiB | $(mib "$qdrop") MiB | $(ratio "$cdrop" "$qdrop") | |"
  echo "| clone rate | $(val clone_rate) /s ($(val clone_rate_per_core) /s per core) | | | 10 /s per core |"
  echo "| idle guests a 24 GiB host holds (by the MemAvailable drop) | $fit | | | 1000 |"
  echo "| daemon RSS at $(val condo_running) guests | $(mib "$(val daemon_rss_kib)") MiB | | | |"
  echo "| API latency at $(val condo_running) guests: GET /guests/NAME, GET /host, GET /guests | $(val api_get_guest_ms) ms, $(val api_get_host_ms) ms, $(val api_list_guests_ms) ms | | | |"
  echo
  echo "condo stopped at $(val condo_running) guests: $reason. QEMU: $qreason."
} > benches/results/density.md
cat benches/results/density.md
