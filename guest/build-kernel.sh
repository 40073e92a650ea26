#!/usr/bin/env bash
# Builds condo's minimal microVM guest kernel from Debian's linux-source-6.1.
# Output: $CACHE/kernel/vmlinux (ELF, PVH entry) and $CACHE/kernel/bzImage.
# Rebuilt only when the config fragment or the source package changes.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"

out="$CACHE/kernel"
frag="$HERE/kernel/microvm.config"
mkdir -p "$out" "$CACHE/debs"

deb=$(fetch_deb linux-source-6.1)
stamp="$(cat "$frag" "$HERE/build-kernel.sh" | sha256sum | cut -c1-16)-$(basename "$deb")"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
  exit 0
fi

src="$CACHE/linux-src"
if [ ! -f "$src/.extracted-$(basename "$deb")" ]; then
  step "unpacking $(basename "$deb")"
  rm -rf "$src" "$CACHE/linux-src.deb"
  mkdir -p "$CACHE/linux-src.deb"
  dpkg-deb -x "$deb" "$CACHE/linux-src.deb"
  tarball=$(ls "$CACHE"/linux-src.deb/usr/src/linux-source-*.tar.xz)
  mkdir -p "$src"
  tar -xJf "$tarball" -C "$src" --strip-components=1
  rm -rf "$CACHE/linux-src.deb"
  touch "$src/.extracted-$(basename "$deb")"
fi

step "configuring the guest kernel (tinyconfig + guest/kernel/microvm.config)"
cd "$src"
make -s tinyconfig >/dev/null
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m .config "$frag" >/dev/null
make -s olddefconfig >/dev/null
step "building the guest kernel (about 4 minutes the first time)"
make -j"$(nproc)" vmlinux bzImage 2>&1 | grep -E '^(  (LD|OBJCOPY|BUILD) |.*error)' >&2 || true
test -f vmlinux && test -f arch/x86/boot/bzImage || die "kernel build failed in $src"
cp vmlinux "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
cp arch/x86/boot/bzImage "$out/bzImage.tmp" && mv "$out/bzImage.tmp" "$out/bzImage"
cp .config "$out/config"
echo "$stamp" > "$out/stamp"
step "guest kernel ready: $out/vmlinux, $out/bzImage"
