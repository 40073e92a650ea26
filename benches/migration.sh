#!/usr/bin/env bash
# Live migration benchmark, condo and QEMU side by side: total migration
# time, downtime seen from outside (the gap in the guest's 10 ms serial
# ticks between the source's console and the destination's) and bytes
# sent, for an idle 256 MiB guest, an idle 2 GiB guest and a guest
# dirtying 64 MiB/s; both over TCP on loopback, alternating, ROUNDS rounds
# each (default 5, medians); to benches/results/migration.md. Runs directly
# where /dev/kvm can boot Linux, otherwise in the nested test host (both
# VMMs in the same one).
#   ROUNDS=5 benches/migration.sh
#   CASES=idle256,dirty64 ROUNDS=1 benches/migration.sh   # a quick trial
#   CASES=dirtyfast ROUNDS=1 benches/migration.sh         # not by default: a guest dirtying as fast as it can
#   TESTHOST_CPUS=2 benches/migration.sh                  # the test host's CPUs (default 1)
#   DOWNTIME_MS=300 GUEST_CPUS=2                          # the allowed pause, the guest's vCPUs (defaults)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
rounds="${ROUNDS:-5}"
cases="${CASES:-idle256,idle2048,dirty64}"
th_cpus="${TESTHOST_CPUS:-1}"
guest_cpus="${GUEST_CPUS:-2}"
downtime="${DOWNTIME_MS:-300}"
bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
step "building condo and condo-bench (release)"
cargo build --release --locked -q -p condo -p condo-bench
condo_bin="$BUILD/release/condo"
bench_bin="$BUILD/release/condo-bench"
qemu_bin="$(command -v qemu-system-x86_64)"
args=(migration --condo "$condo_bin" --qemu "$qemu_bin" --kernel "$CONDO_GUEST_VMLINUX"
  --initrd "$CONDO_GUEST_INITRAMFS" --rounds "$rounds" --cpus "$guest_cpus" --cases "$cases"
  --downtime-ms "$downtime")
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# A migration in the test host takes seconds to a minute; a round is two.
timeout=$((900 + rounds * 3 * 2 * 240))
load="$(cut -d' ' -f1-3 /proc/loadavg)"
if bash testhost/kvm-ok; then
  where="directly on this host's /dev/kvm"
  dir=$(mktemp -d)
  trap 'rm -f "$tmp"; rm -rf "$dir"' EXIT
  "$bench_bin" "${args[@]}" --dir "$dir" | tee "$tmp"
else
  where="inside the nested test host (QEMU TCG L1 with emulated SVM, $th_cpus CPU(s), 8 GiB), both VMMs in the same L1"
  bash testhost/build.sh
  bash testhost/run --cpus "$th_cpus" --mem 8192 --file "$condo_bin" --file "${condo_bin}-vmm" --file "$bench_bin" --file "$CONDO_GUEST_VMLINUX" \
    --file "$qemu_bin" --file /usr/share/qemu --file /usr/share/seabios \
    --file "$CONDO_GUEST_INITRAMFS" --timeout "$timeout" -- "$bench_bin" "${args[@]}" --dir /var/migbench | tee "$tmp"
fi
grep -q '^@@summary' "$tmp" || die "the benchmark printed no results (see above)"
failed=$(grep -c '^migration .* failed:' "$tmp" || true)
netns=$(sed -n 's/^migration netns=\([a-z]*\).*/\1/p' "$tmp")
{
  echo "# Live migration benchmark"
  echo
  echo "Measured $(date -u +%Y-%m-%d) $where, with \`ROUNDS=$rounds benches/migration.sh\` ($rounds rounds per guest and VMM, alternating, medians)"
  echo "(condo $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $("$qemu_bin" --version | head -1));"
  echo "the machine's load average when it started: $load."
  echo
  echo "Guest: the minimal 6.1 \`vmlinux\` and busybox initramfs for both, $guest_cpus vCPUs, printing \`tick<N>\` on its serial"
  echo "console every 10 ms (the \"idle\" guests do only that); the dirtying guest also runs \`dirty 128 64\`"
  echo "(\`guest/tools/dirty.c\`: 128 MiB written page by page, over and over, at 64 MiB/s), and moves once all of it"
  echo "has been written. Each round boots the guest on a source VMM, starts an empty destination VMM"
  echo "listening on 127.0.0.1 and moves the guest over TCP on loopback; condo goes first in odd rounds, QEMU in even ones."
  echo
  echo "- condo: two \`condo run --api-sock\` processes (release build); \`PUT /migration/receive\` on the empty one,"
  echo "  \`PUT /migration/send\` with \`downtime_ms\` $downtime on the running one (no bandwidth cap: condo's default)."
  echo "- QEMU: \`-M microvm\` (virtio-mmio), the destination started with \`-incoming tcp:127.0.0.1:PORT\`; on the source,"
  echo "  QMP \`migrate-set-parameters\` \`downtime-limit\` $downtime and \`max-bandwidth\` 1 TiB/s (QEMU's default caps at"
  echo "  128 MiB/s; condo has no cap), \`migrate-set-capabilities\` \`auto-converge\` on (for every guest; condo throttles"
  echo "  a guest that outruns the link without being asked) and \`events\` on, then \`migrate tcp:127.0.0.1:PORT\`."
  echo
  echo "What each figure is:"
  echo
  echo "- **total time**: from the migration request (condo's \`PUT /migration/send\`, QEMU's \`migrate\`) to the guest's"
  echo "  first output on the destination's console."
  echo "- **downtime seen from outside**: from the last output on the source's console to the first on the"
  echo "  destination's (both read with host timestamps). It includes up to one tick period: the guest's normal longest"
  echo "  gap between outputs, measured in the second before each request, is the last row (resolution)."
  echo "- **bytes on the wire**: IP octets sent on loopback from the request to the end; the benchmark runs in a"
  echo "  network namespace of its own, where nothing else talks, so that is the migration stream (both directions,"
  echo "  with TCP/IP headers and acknowledgements)."
  if [ "$netns" != private ]; then
    echo "  **This run had no network namespace of its own: the figure also counts whatever else this host sent.**"
  fi
  echo "- **the VMM's own figures**: condo's migration metrics from the source's metrics file (\`total_ms\`,"
  echo "  \`downtime_ms\`: from pausing the guest to the destination saying it runs it, \`bytes_sent\`, \`passes\`);"
  echo "  QEMU's \`query-migrate\` on the source (\`total-time\`, \`downtime\`: the source's stop to its end of the stream,"
  echo "  not the destination's load, \`ram.transferred\`: RAM pages and their headers, not the devices' state,"
  echo "  \`dirty-sync-count\`)."
  echo "- **parts of the downtime seen from outside**: (1) the source's silence before the VMM paused the guest"
  echo "  (the VMM's end minus its own downtime, minus the source's last output), (2) the VMM's own downtime, (3) from"
  echo "  the VMM's own end (condo's answer to the send request, QEMU's \`completed\` event on the source) to the"
  echo "  destination's first output (negative when the destination printed before the source heard it runs)."
  echo "- **longest gap in pre-copy**: the longest silence on the source's console between the request and its last"
  echo "  output: a vCPU held back by auto-converge shows here."
  echo "- Every round checks that the guest's tick counter goes on across the move (the destination's first tick"
  echo "  follows the source's last) and that the source prints nothing once the destination runs."
  echo
  echo "Ratio = condo / QEMU (lower is better). Targets (issue 18): downtime and total time at most QEMU's for each"
  echo "guest, bytes at most QEMU's for the idle guests."
  if [ "$failed" -gt 0 ]; then
    echo
    echo "Failed rounds ($failed), left out of the medians:"
    echo
    grep '^migration .* failed:' "$tmp" | sed 's/^/    /'
  fi
  echo
  sed -n '/^@@summary/,$p' "$tmp" | sed '1d'
  echo
  echo "Each migration as the run printed it (times from the request; condo's own log lines):"
  echo
  grep -E '^migration case=|^(condo|qemu): (request at|.*INFO migration)' "$tmp" | sed 's/^/    /'
} > benches/results/migration.md
cat benches/results/migration.md
