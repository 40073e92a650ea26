#!/usr/bin/env bash
# Snapshot benchmark, condo and QEMU side by side: snapshot create time and
# restore-to-answer latency (restore request to the guest's next tick on
# its serial console) for 128 MiB and 2 GiB guests, ROUNDS restores each
# (default 5, medians), and the resident memory of an idle VMM waiting for
# a restore; to benches/results/snapshot.md, with where condo's load goes
# (its steps), KVM's statistics and exit census for both. condo restores
# with the host's kept KVM probe verdict, with a fresh probe, with
# --no-kvm-probe, and with no working-set record (a memory file's first
# restore, which records one). Runs directly where /dev/kvm can boot Linux, otherwise
# in the nested test host. CONDO_B=PATH adds a second condo build (A/B;
# CONDO_A=PATH replaces this tree's build); RESULTS=FILE writes elsewhere.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
rounds="${ROUNDS:-5}"
bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
cargo build --release --locked -q -p condo -p condo-bench
condo_bin="${CONDO_A:-$BUILD/release/condo}"
bench_bin="$BUILD/release/condo-bench"
qemu_bin="$(command -v qemu-system-x86_64)"
args=(snapshot --condo "$condo_bin" --qemu "$qemu_bin" --kernel "$CONDO_GUEST_VMLINUX" --initrd "$CONDO_GUEST_INITRAMFS" --rounds "$rounds")
files=(--file "$condo_bin" --file "${condo_bin}-vmm")
if [ -n "${CONDO_B:-}" ]; then
  args+=(--condo-b "$CONDO_B")
  files+=(--file "$CONDO_B")
  [ ! -e "${CONDO_B}-vmm" ] || files+=(--file "${CONDO_B}-vmm")
fi
out="${RESULTS:-$ROOT/benches/results/snapshot.md}"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
if bash testhost/kvm-ok; then
  where="directly on this host's /dev/kvm"
  "$bench_bin" "${args[@]}" --dir "$(mktemp -d)" | tee "$tmp"
else
  where="inside the nested test host (QEMU TCG L1 with emulated SVM)"
  bash testhost/build.sh
  bash testhost/run --cpus 2 "${files[@]}" --file "$bench_bin" --file "$CONDO_GUEST_VMLINUX" \
    --file "$qemu_bin" --file /usr/share/qemu --file /usr/share/seabios \
    --file "$CONDO_GUEST_INITRAMFS" --timeout 1800 -- "$bench_bin" "${args[@]}" --dir /var/snapbench | tee "$tmp"
fi
field() { sed -n "s/.*vmm=$1 mem_mib=$2 .*$3=\([0-9.]*\).*/\1/p" "$tmp" | head -1; }
ratio() { awk -v c="$1" -v q="$2" 'BEGIN { if (q > 0) printf "%.2f", c / q; else print "-" }'; }
{
  echo "# Snapshot benchmark"
  echo
  echo "Measured $(date -u +%Y-%m-%d) $where, with \`benches/snapshot.sh\` ($rounds restores per size and way, medians)"
  echo "(condo $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $("$qemu_bin" --version | head -1))."
  echo "Guest: minimal 6.1 kernel + busybox, 2 vCPUs, printing a tick on its serial console every 10 ms."
  echo "condo: \`PUT /snapshot/create\` of a paused VM; restore = a fresh \`condo run --api-sock\` and \`PUT /snapshot/load\` with \`resume_vm\`."
  echo "QEMU (\`microvm\`): QMP \`stop\` + \`migrate\` to a file (\`exec:cat\`); restore = a fresh \`-incoming defer\` process, \`migrate-incoming\`, then \`cont\` when it is in."
  echo "Each restoring VMM has finished starting (its CPU time stopped growing) before the request, as one kept waiting for a restore has."
  echo "Answer = the restored guest's first tick, timed from the restore request. Ratio = condo / QEMU (lower is better)."
  echo
  echo "| guest memory | create condo | create QEMU | ratio | restore to answer condo | restore to answer QEMU | ratio |"
  echo "|---|---|---|---|---|---|---|"
  for m in 128 2048; do
    cc=$(field condo $m create_ms); qc=$(field qemu $m create_ms)
    ca=$(field condo $m answer_ms); qa=$(field qemu $m answer_ms)
    echo "| $m MiB | $cc ms | $qc ms | $(ratio "$cc" "$qc") | $ca ms | $qa ms | $(ratio "$ca" "$qa") |"
  done
  echo
  echo "The load request, answered (ms):"
  echo
  echo "| guest memory | condo, kept probe verdict | condo, fresh probe | condo, --no-kvm-probe | QEMU (migrate-incoming + cont) |"
  echo "|---|---|---|---|---|"
  for m in 128 2048; do
    echo "| $m MiB | $(field condo $m load_ms) | $(field 'condo (fresh probe)' $m load_ms) | $(field 'condo (--no-kvm-probe)' $m load_ms) | $(field qemu $m load_ms) |"
  done
  echo
  echo "A memory file's first restore (no working-set record yet: it records one, and the restores above copy it in), restore to answer: $(field 'condo (first restore: no working set)' 128 answer_ms) ms at 128 MiB, $(field 'condo (first restore: no working set)' 2048 answer_ms) ms at 2048 MiB."
  echo
  echo "Idle VMM waiting for a restore: condo $(field condo 128 idle_rss_kib) KiB resident (API server, VM prepared), QEMU $(field qemu 128 idle_rss_kib) KiB (\`-incoming defer\`, 128 MiB guest)."
  sed -n '/^###/,$p' "$tmp" | grep -v '^snapshot '
  echo
  echo "Lines:"
  echo
  grep '^snapshot ' "$tmp" | sed 's/^/    /'
} > "$out"
cat "$out"
