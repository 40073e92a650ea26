#!/usr/bin/env bash
# Fetches Debian's stock cloud kernel (linux-image-cloud-amd64), unmodified:
#   $CACHE/cloud/vmlinuz            the bzImage
#   $CACHE/cloud/modules/lib/modules/<version>/  its modules
#   $CACHE/cloud/initramfs.cpio.gz  the test initramfs plus the virtio-mmio
#                                   modules, which its /init loads in order
# The nested test host (testhost/) boots this same kernel as its outer machine.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"

out="$CACHE/cloud"
mkdir -p "$out" "$CACHE/debs"
pkg=$(depends_of linux-image-cloud-amd64)
if [ -z "$pkg" ]; then
  apt-get update -q >/dev/null 2>&1 || true
  pkg=$(depends_of linux-image-cloud-amd64)
fi
[ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package"
deb=$(fetch_deb "$pkg")
bash "$HERE/build-initramfs.sh"
stamp="$(cat "$HERE/fetch-cloud-kernel.sh" "$CACHE/guest/stamp" | sha256sum | cut -c1-16)-$(basename "$deb")"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ]; then
  exit 0
fi
step "unpacking $(basename "$deb")"
rm -rf "$out/pkg" && mkdir -p "$out/pkg"
dpkg-deb -x "$deb" "$out/pkg"
cp "$out"/pkg/boot/vmlinuz-* "$out/vmlinuz"
rm -rf "$out/modules" && mkdir -p "$out/modules/lib" && mv "$out/pkg/lib/modules" "$out/modules/lib/modules"
kver=$(ls "$out/modules/lib/modules")
echo "$kver" > "$out/version"
rm -rf "$out/pkg"
# The package leaves modules.dep to depmod at install time.
depmod -b "$out/modules" "$kver"

# Modules a condo guest needs from this kernel, dependencies first.
wanted="virtio_mmio virtio_blk virtio_net virtio_rng virtio_balloon vmw_vsock_virtio_transport"
moddir="$out/modules/lib/modules/$kver"
declare -A seen=()
order=()
add_mod() { # add_mod NAME: NAME's dependencies, then NAME
  local name="$1" path deps d
  path=$(grep -E "(^|/)${name//_/[-_]}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -1 | cut -d: -f1 || true)
  [ -n "$path" ] || return 0 # built in
  [ -z "${seen[$path]:-}" ] || return 0
  seen[$path]=1
  deps=$(grep -E "^$path:" "$moddir/modules.dep" | cut -d: -f2-)
  for d in $deps; do
    d=$(basename "$d"); d=${d%%.ko*}
    add_mod "$d"
  done
  order+=("$path")
}
for m in $wanted; do add_mod "$m"; done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$CACHE/guest/rootdir" "$work/root"
: > "$work/root/etc/modules-load"
for path in "${order[@]}"; do
  name=$(basename "$path"); name=${name%%.ko*}
  case "$path" in
    *.ko.xz) xz -dc "$moddir/$path" > "$work/root/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$moddir/$path" > "$work/root/lib/modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$moddir/$path" > "$work/root/lib/modules/$name.ko" ;;
    *) cp "$moddir/$path" "$work/root/lib/modules/$name.ko" ;;
  esac
  echo "$name" >> "$work/root/etc/modules-load"
done
(cd "$work/root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 > "$out/initramfs.cpio.gz"
echo "$stamp" > "$out/stamp"
step "Debian cloud kernel $kver ready: $out/vmlinuz (modules: ${order[*]##*/})"
