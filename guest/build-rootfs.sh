#!/usr/bin/env bash
# Builds $CACHE/guest/rootfs.ext4: the test guest's busybox root as a 24 MiB
# ext4 image (mkfs.ext4 -d), for booting with root=/dev/vda init=/init.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
out="$CACHE/guest"
bash "$HERE/build-initramfs.sh"
stamp="$(cat "$HERE/build-rootfs.sh" "$out/stamp" | sha256sum | cut -c1-16)"
if [ -f "$out/rootfs.stamp" ] && [ "$(cat "$out/rootfs.stamp")" = "$stamp" ] && [ -f "$out/rootfs.ext4" ]; then
  exit 0
fi
step "building the guest ext4 root image"
rm -f "$out/rootfs.ext4.tmp"
mkfs.ext4 -q -F -L condo-root -d "$out/rootdir" "$out/rootfs.ext4.tmp" 24M
mv "$out/rootfs.ext4.tmp" "$out/rootfs.ext4"
echo "$stamp" > "$out/rootfs.stamp"
