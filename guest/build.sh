#!/usr/bin/env bash
# Builds every guest artifact and prints `export` lines for them:
#   eval "$(guest/build.sh)"
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
# Standard output carries only the exports: the builders' chatter (mkfs
# prints even with -q) goes to standard error.
{
  bash "$HERE/../scripts/install-deps.sh"
  bash "$HERE/build-kernel.sh"
  bash "$HERE/build-initramfs.sh"
  bash "$HERE/fetch-cloud-kernel.sh"
  bash "$HERE/build-rootfs.sh"
} >&2
cat <<EOT
export CONDO_GUEST_VMLINUX=$CACHE/kernel/vmlinux
export CONDO_GUEST_BZIMAGE=$CACHE/kernel/bzImage
export CONDO_GUEST_INITRAMFS=$CACHE/guest/initramfs.cpio.gz
export CONDO_CLOUD_KERNEL=$CACHE/cloud/vmlinuz
export CONDO_CLOUD_INITRAMFS=$CACHE/cloud/initramfs.cpio.gz
export CONDO_GUEST_ROOTFS=$CACHE/guest/rootfs.ext4
EOT
