#!/usr/bin/env bash
# Snapshot benchmark: snapshot create time and restore-to-answer latency
# (load request to the guest echoing a byte over vsock) for 128 MiB and
# 2 GiB guests, ROUNDS restores each (default 5, medians), and the resident
# memory of an idle API server; to benches/results/snapshot.md. Runs
# directly where /dev/kvm can boot Linux, otherwise in the nested test host.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
rounds="${ROUNDS:-5}"
bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
cargo build --release --locked -q -p condo -p condo-bench
condo_bin="$ROOT/target/release/condo"
bench_bin="$ROOT/target/release/condo-bench"
args=(snapshot --condo "$condo_bin" --kernel "$CONDO_GUEST_VMLINUX" --initrd "$CONDO_GUEST_INITRAMFS" --rounds "$rounds")
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
if bash testhost/kvm-ok; then
  where="directly on this host's /dev/kvm"
  "$bench_bin" "${args[@]}" --dir "$(mktemp -d)" | tee "$tmp"
else
  where="inside the nested test host (QEMU TCG L1 with emulated SVM)"
  bash testhost/build.sh
  bash testhost/run --file "$condo_bin" --file "$bench_bin" --file "$CONDO_GUEST_VMLINUX" \
    --file "$CONDO_GUEST_INITRAMFS" --timeout 1800 -- "$bench_bin" "${args[@]}" --dir /var/snapbench | tee "$tmp"
fi
field() { sed -n "s/.*mem_mib=$1 .*$2=\([0-9.]*\).*/\1/p" "$tmp"; }
{
  echo "# Snapshot benchmark"
  echo
  echo "Measured $(date -u +%Y-%m-%d) $where, with \`benches/snapshot.sh\` ($rounds restores per size, medians)."
  echo "Guest: minimal 6.1 kernel + busybox, 2 vCPUs, answering on vsock port 5000. Restore: a fresh \`condo run --no-kvm-probe --api-sock\`, \`PUT /snapshot/load\` with \`resume_vm\`; answer = the guest echoed a byte over vsock."
  echo
  echo "| guest memory | snapshot create | load request | load to guest answering |"
  echo "|---|---|---|---|"
  for m in 128 2048; do
    echo "| $m MiB | $(field $m create_ms) ms | $(field $m load_ms) ms | $(field $m answer_ms) ms |"
  done
  echo
  echo "Idle API server (condo waiting for configuration): $(field 128 api_idle_rss_kib) KiB resident."
} > benches/results/snapshot.md
cat benches/results/snapshot.md
