#!/usr/bin/env bash
# Boot benchmark: condo and QEMU `microvm` (Debian's qemu-system-x86) on the
# same kernel (the minimal vmlinux, PVH entry) and initramfs, alternating,
# ROUNDS rounds each (default 7); medians and ratios. Runs directly where
# /dev/kvm can boot Linux, otherwise inside the nested test host (both VMMs
# in the same test host, so the comparison stays fair).
#   benches/boot.sh            # prints the tables and writes benches/results/boot.md
# The results hold where condo's boot goes (its build steps), KVM's
# statistics for both guests and one census round each (exits by reason,
# ports, MSRs). CONDO_B=PATH adds a second condo build to every round (an
# A/B comparison; CONDO_A=PATH replaces this tree's build as the first);
# RESULTS=FILE writes elsewhere.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
rounds="${ROUNDS:-7}"

bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
step "building condo and condo-bench (release)"
cargo build --release --locked -q -p condo -p condo-bench
condo_bin="${CONDO_A:-$BUILD/release/condo}"
bench_bin="$BUILD/release/condo-bench"
qemu_bin="$(command -v qemu-system-x86_64)"
args=(boot --condo "$condo_bin" --qemu "$qemu_bin" --kernel "$CONDO_GUEST_VMLINUX"
  --initrd "$CONDO_GUEST_INITRAMFS" --rounds "$rounds" --cpus 2 --memory 256)
files=(--file "$condo_bin" --file "${condo_bin}-vmm")
if [ -n "${CONDO_B:-}" ]; then
  args+=(--condo-b "$CONDO_B")
  files+=(--file "$CONDO_B")
  [ ! -e "${CONDO_B}-vmm" ] || files+=(--file "${CONDO_B}-vmm")
fi

out="${RESULTS:-$ROOT/benches/results/boot.md}"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
if bash testhost/kvm-ok; then
  where="directly on this host's /dev/kvm"
  "$bench_bin" "${args[@]}" | tee "$tmp"
else
  where="inside the nested test host (QEMU TCG L1 with emulated SVM, 2 vCPUs), both VMMs in the same L1"
  bash testhost/build.sh
  bash testhost/run --cpus 2 "${files[@]}" --file "$CONDO_GUEST_VMLINUX" --file "$CONDO_GUEST_INITRAMFS" \
    --file "$qemu_bin" --file /usr/share/qemu --file /usr/share/seabios \
    --timeout 1800 -- "$bench_bin" "${args[@]}" | tee "$tmp"
fi
{
  echo "# Boot benchmark"
  echo
  echo "Measured $(date -u +%Y-%m-%d) $where, with \`benches/boot.sh\`"
  echo "(condo $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $("$qemu_bin" --version | head -1))."
  echo "Guest: minimal 6.1 kernel (vmlinux, PVH) + busybox initramfs, 2 vCPUs, 256 MiB."
  echo "Boot-to-init: VMM spawn to the guest's /init printing its ready line."
  echo "VMM overhead: VMM RSS minus the RSS of the guest RAM mapping, 300 ms after init."
  echo "condo's steps: its own log line (\`vmm::timing\`, \`--log-level info\`); KVM's figures: debugfs and tracefs in the test host."
  echo
  sed -n '/^|/,$p' "$tmp" | grep -v '^round'
  echo
  echo "Rounds:"
  echo
  grep '^round' "$tmp" | sed 's/^/    /'
} > "$out"
step "results written to $out"
