#!/usr/bin/env bash
# condo's main job on a fresh machine: installs what is missing, builds the
# guest artifacts (first run: about 5 minutes for the kernel) and condo, then
# boots a default guest: 2 vCPUs, 256 MiB, the minimal kernel and busybox
# initramfs, running the command given after `--` (default: a short report).
# Where /dev/kvm cannot boot Linux, the guest runs inside the nested test host.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh

guest_cmd='uname -sr; echo vcpus: $(nproc); grep MemTotal /proc/meminfo'
if [ "${1:-}" = "--" ]; then shift; guest_cmd="$*"; fi

bash scripts/install-deps.sh
eval "$(bash guest/build.sh)"
step "building condo (release)"
cargo build --release --locked -q -p condo
condo_bin="$BUILD/release/condo"

run_args=(run --kernel "$CONDO_GUEST_VMLINUX" --initrd "$CONDO_GUEST_INITRAMFS"
  --cpus 2 --memory 256 --cmdline "console=ttyS0 reboot=k panic=1 quiet -- $guest_cmd")
if bash testhost/kvm-ok; then
  exec "$condo_bin" "${run_args[@]}"
fi
step "this /dev/kvm cannot boot Linux: booting inside the nested test host"
bash testhost/build.sh
exec bash testhost/run --file "$condo_bin" --file "${condo_bin}-vmm" --file "$CONDO_GUEST_VMLINUX" \
  --file "$CONDO_GUEST_INITRAMFS" -- "$condo_bin" "${run_args[@]}"
