#!/usr/bin/env bash
# OCI runtime benchmark: `podman run --rm IMAGE true` wall time with condo's
# runtime (a microVM per container) and with runc (namespaces only: the
# floor), alternating, ROUNDS rounds each (default 5); then the host memory
# each running container takes with either (N_CONTAINERS at once, default
# 3). Runs podman inside the nested test host with the engine layer
# (testhost/build-engines.sh), where /dev/kvm can boot guests.
#   benches/oci.sh             # writes benches/results/oci.md
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
rounds="${ROUNDS:-5}"

bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
step "building condo (release)"
cargo build --release --locked -q -p condo
condo_bin="$BUILD/release/condo"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
bash testhost/run --engines --cpus "${TESTHOST_CPUS:-1}" --timeout 3000 \
  --file "$condo_bin" --file "${condo_bin}-vmm" --file "$CONDO_GUEST_VMLINUX" --file "$CONDO_GUEST_INITRAMFS" \
  --file "$(command -v mkfs.ext4)" --file "$(command -v debugfs)" --file "$(command -v e2fsck)" \
  --env "CONDO_BIN=$condo_bin" --env "CONDO_GUEST_VMLINUX=$CONDO_GUEST_VMLINUX" \
  --env "CONDO_GUEST_INITRAMFS=$CONDO_GUEST_INITRAMFS" --env "ROUNDS=$rounds" \
  --env "N_CONTAINERS=${N_CONTAINERS:-3}" \
  -- "$ROOT/benches/oci-rounds.sh" | tee "$tmp"

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
c_ms=$(awk '/^round .* condo / {print $4}' "$tmp" | median)
r_ms=$(awk '/^round .* runc / {print $4}' "$tmp" | median)
field() { grep "^mem $1 " "$tmp" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
c_host=$(field condo host_kib_per_container) r_host=$(field runc host_kib_per_container)
c_own=$(field condo own_rss_kib_per_container) r_own=$(field runc own_rss_kib_per_container)
c_conmon=$(field condo conmon_rss_kib_per_container) r_conmon=$(field runc conmon_rss_kib_per_container)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "-" }'; }
out="$ROOT/benches/results/oci.md"
{
  echo "# OCI runtime benchmark"
  echo
  echo "Measured $(date -u +%Y-%m-%d) with \`benches/oci.sh\` (condo $(git rev-parse --short HEAD 2>/dev/null || echo unknown)),"
  echo "podman 4.3.1 (conmon 2.1.6) inside the nested test host (QEMU TCG with emulated SVM,"
  echo "${TESTHOST_CPUS:-1} CPU), busybox image; condo's VMs: 1 vCPU, 256 MiB, the minimal 6.1 kernel"
  echo "and the agent's initramfs. runc 1.1.5 is the floor: namespaces, no VM."
  echo "Absolute times include the outer machine's emulation; the difference is what carries over."
  echo
  echo "| metric | condo | runc | condo - runc | condo / runc |"
  echo "|---|---|---|---|---|"
  echo "| \`podman run --rm IMAGE true\`, median of $rounds | $c_ms ms | $r_ms ms | $((c_ms - r_ms)) ms | $(ratio "$c_ms" "$r_ms") |"
  echo "| host memory per running container (MemAvailable) | $(mib "$c_host") MiB | $(mib "$r_host") MiB | $(mib $((c_host - r_host))) MiB | - |"
  echo "| resident memory of the container's own processes | $(mib "$c_own") MiB | $(mib "$r_own") MiB | $(mib $((c_own - r_own))) MiB | - |"
  echo "| conmon beside it | $(mib "$c_conmon") MiB | $(mib "$r_conmon") MiB | | |"
  echo
  echo "The per-container VM overhead is the condo - runc column: for condo the"
  echo "container's own processes are its monitor and its VMM (guest RAM the"
  echo "guest touched included); for runc, the container's process."
  echo
  echo "Rounds (wall time of each \`podman run\`):"
  echo
  grep -E '^(round|mem) ' "$tmp" | sed 's/^/    /'
} > "$out"
cat "$out"
step "results written to benches/results/oci.md"
