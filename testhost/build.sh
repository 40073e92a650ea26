#!/usr/bin/env bash
# Prepares the parts of the nested test host that do not change per run:
# Debian's cloud kernel (guest/fetch-cloud-kernel.sh) as the outer machine's
# kernel, and $CACHE/testhost/base.cpio: busybox, the KVM modules and /init.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/../guest/lib.sh"

bash "$HERE/../scripts/install-deps.sh"
bash "$HERE/../guest/fetch-cloud-kernel.sh"
out="$CACHE/testhost"
mkdir -p "$out"
stamp="$(cat "$HERE/build.sh" "$HERE/l1-init.sh" "$CACHE/cloud/stamp" | sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/base.cpio" ]; then
  exit 0
fi
step "building the test host's base initramfs"
kver=$(cat "$CACHE/cloud/version")
moddir="$CACHE/cloud/modules/lib/modules/$kver"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$CACHE/guest/rootdir" "$work/root"
rm -f "$work/root/init" "$work/root/lib/modules/"*
mkdir -p "$work/root/testhost" "$work/root/usr/bin" "$work/root/usr/sbin"
install -m 0755 "$HERE/l1-init.sh" "$work/root/init"
: > "$work/root/etc/modules-load"
for m in kernel/virt/lib/irqbypass.ko kernel/arch/x86/kvm/kvm.ko kernel/arch/x86/kvm/kvm-amd.ko \
         kernel/drivers/net/tun.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/vhost/vhost.ko \
         kernel/drivers/vhost/vhost_iotlb.ko; do
  [ -f "$moddir/$m" ] || continue
  name=$(basename "$m" .ko)
  cp "$moddir/$m" "$work/root/lib/modules/$name.ko"
done
for name in irqbypass kvm kvm-amd tun; do
  [ -f "$work/root/lib/modules/$name.ko" ] && echo "$name" >> "$work/root/etc/modules-load"
done
# The host daemon's tests (condo/tests/host.rs): its managed bridge, one
# veth pair per guest, and NAT through nftables. Dependencies first, as
# modules.dep lists them.
declare -A seen=()
add_mod() { # add_mod PATH (relative to $moddir)
  local path="$1" d
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  for d in $(grep -E "^$path:" "$moddir/modules.dep" | cut -d: -f2-); do add_mod "$d"; done
  name=$(basename "$path"); name=${name%%.ko*}
  case "$path" in
    *.ko.xz) xz -dc "$moddir/$path" > "$work/root/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$moddir/$path" > "$work/root/lib/modules/$name.ko" ;;
    *) cp "$moddir/$path" "$work/root/lib/modules/$name.ko" ;;
  esac
  echo "$name" >> "$work/root/etc/modules-load"
}
for m in bridge veth nft_masq nft_chain_nat nft_ct; do
  path=$(grep -oE "^[^:]*/$m\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -1 | tr -d :)
  [ -n "$path" ] && add_mod "$path"
done
(cd "$work/root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) > "$out/base.cpio.tmp"
mv "$out/base.cpio.tmp" "$out/base.cpio"
echo "$stamp" > "$out/stamp"
step "test host ready"
