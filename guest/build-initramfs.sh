#!/usr/bin/env bash
# Builds the busybox initramfs for condo's test guests:
#   $CACHE/guest/initramfs.cpio.gz  (for the minimal kernel)
#   $CACHE/cloud/initramfs.cpio.gz  (for Debian's cloud kernel: the same, plus
#                                    its virtio modules, loaded by /init)
# Its /init prints "condo-guest: ready", runs the command given after `--` on
# the kernel command line, prints "condo-guest: exit=<rc>", then ends as
# `condo.end=` says: poweroff (default), reboot, panic, wait or shell.
# It also holds condo's guest test tools (guest/tools/*.c, built static) and
# the guest agent, /sbin/condo-agent (docs/agent.md): init.sh starts it when
# the kernel command line has condo.agent=1, and rdinit=/sbin/condo-agent
# makes it the guest's init.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"

out="$CACHE/guest"
mkdir -p "$out" "$CACHE/debs"
bb_deb=$(fetch_deb busybox-static)
# The agent is built (static, like every binary of the workspace) first: its
# hash is part of the stamp, so a changed agent rebuilds the initramfs.
(cd "$HERE/.." && cargo build -p agent --release --locked -q) || die "cannot build the guest agent"
agent_bin="$BUILD/release/condo-agent"
stamp="$(cat "$HERE/build-initramfs.sh" "$HERE/init.sh" "$HERE"/tools/*.c "$agent_bin" | sha256sum | cut -c1-16)-$(basename "$bb_deb")"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/initramfs.cpio.gz" ]; then
  exit 0
fi
step "building the guest initramfs (busybox)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$bb_deb" "$work/bb"
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,root,lib/modules}
cp "$work/bb/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
install -m 0755 "$HERE/init.sh" "$root/init"
# Test tools, built from source: `vsock` (listen/connect on AF_VSOCK).
for tool in "$HERE"/tools/*.c; do
  gcc -static -O2 -Wall -o "$root/bin/$(basename "$tool" .c)" "$tool"
done
install -m 0755 "$agent_bin" "$root/sbin/condo-agent"
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
cp -a "$root" "$out/rootdir.tmp" 2>/dev/null || true
rm -rf "$out/rootdir" && mv "$out/rootdir.tmp" "$out/rootdir"
echo "$stamp" > "$out/stamp"
step "guest initramfs ready: $out/initramfs.cpio.gz"
