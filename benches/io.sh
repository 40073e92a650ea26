#!/usr/bin/env bash
# Device benchmark: sequential disk write (with fsync) and read, 4 KiB
# random read and write IOPS (O_DIRECT, queue depth 1), and TCP
# throughput guest to host over a TAP, condo and QEMU microvm (virtio-mmio)
# side by side on the same guest and image, ROUNDS rounds (default 5);
# medians and ratios to benches/results/io.md. TESTHOST_CPUS: CPUs of
# the nested test host, where one is needed (default 1: with two, the
# emulated outer machine stalls guests and crashes, see the README).
# BENCH_DEBUG=1 prints each guest's last lines.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
rounds="${ROUNDS:-5}"
testhost_cpus="${TESTHOST_CPUS:-1}"
bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
cargo build --release --locked -q -p condo
condo_bin="$BUILD/release/condo"
qemu_bin="$(command -v qemu-system-x86_64)"
tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.run"' EXIT
args=("$condo_bin" "$qemu_bin" "$CONDO_GUEST_VMLINUX" "$CONDO_GUEST_INITRAMFS")
if bash testhost/kvm-ok; then
  where="directly on this host's /dev/kvm"
  sh benches/io-rounds.sh "${args[@]}" "$rounds" "$(mktemp -d)" | tee "$tmp"
else
  where="inside the nested test host (CPUs: $testhost_cpus), both VMMs in the same L1"
  bash testhost/build.sh
  # The emulated outer machine (QEMU TCG with nested SVM) now and then
  # panics or stalls (its kernel's stack overflows on an IPI taken inside
  # VMRUN): that is the test host failing (exit 125). Keep the rounds that
  # completed (each pairs condo and QEMU in one session) and run the rest
  # in a new one, at most four attempts.
  done_rounds=0
  for attempt in 1 2 3 4; do
    rc=0
    bash testhost/run --cpus "$testhost_cpus" --timeout 3600 --env "BENCH_DEBUG=${BENCH_DEBUG:-}" --file "$condo_bin" --file "${condo_bin}-vmm" --file "$qemu_bin" --file /usr/share/qemu \
      --file /usr/share/seabios --file "$CONDO_GUEST_VMLINUX" --file "$CONDO_GUEST_INITRAMFS" \
      --file "$ROOT/benches/io-rounds.sh" \
      -- /bin/sh "$ROOT/benches/io-rounds.sh" "${args[@]}" $((rounds - done_rounds)) /var/bench |
      tee "$tmp.run" || rc=$?
    # Only the lines of complete rounds count.
    awk '/^round done$/ { printf "%s", buf; print; buf = ""; next } { buf = buf $0 "\n" }' "$tmp.run" >> "$tmp"
    done_rounds=$(grep -c '^round done$' "$tmp" || true)
    [ "$rc" = 125 ] && [ "$done_rounds" -lt "$rounds" ] || break
    echo "io.sh: the test host failed (attempt $attempt; $done_rounds of $rounds rounds done); running the rest" >&2
  done
  [ "$attempt" = 1 ] || where="$where (rounds from $attempt test-host sessions: the outer machine crashed)"
  [ "$rc" = 0 ] || [ "$done_rounds" -ge "$rounds" ] || exit "$rc"
fi
median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
mbps() { awk -v v="$1" -v m="$2" '$1 == v && $2 == m {print $3}' "$tmp"; } # vmm metric -> MB/s values
{
  echo "# Device benchmark"
  echo
  echo "Measured $(date -u +%Y-%m-%d) $where, with \`benches/io.sh\` ($rounds rounds)."
  echo "Guest: minimal 6.1 kernel + busybox, 2 vCPUs, 256 MiB; 256 MiB raw image; TAP with link-local addresses."
  echo "Disk: busybox dd, 1 MiB blocks, 128 MiB (write with conv=fsync; read after drop_caches). Net: 64 MiB guest to host over TCP (busybox nc). Random I/O: guest/tools/randio.c, 4 KiB O_DIRECT at queue depth 1 (4000 reads, 2000 writes + fsync). Times from the guest's /proc/uptime."
  echo
  echo "| metric, median MB/s (IOPS for *_iops) | condo | QEMU microvm | condo / QEMU |"
  echo "|---|---|---|---|"
  for m in seqwrite seqread randread_iops randwrite_iops nettx; do
    c=$(mbps condo $m | median); q=$(mbps qemu $m | median)
    ratio=$(awk -v c="$c" -v q="$q" 'BEGIN { if (q + 0 > 0 && c + 0 > 0) printf "%.2f", c / q; else print "n/a" }')
    echo "| $m | $c | $q | $ratio |"
  done
} > benches/results/io.md
cat benches/results/io.md
