#!/usr/bin/env bash
# Builds the optional container-engine layer of the nested test host,
# $CACHE/testhost/engines.cpio, which `testhost/run --engines` adds on top
# of the base initramfs: Debian's podman, conmon, runc, containerd (ctr and
# the runc shim), unpacked from their .debs with the shared libraries they
# need, their configuration for a machine without systemd or a network
# (cgroupfs, overlay storage on tmpfs, no default network, the open-file
# limit podman needs here), the overlay module, a busybox root file system
# to import as an image, and /testhost/engines-init, which the test host's
# /init runs first: it mounts the engines' storage, enables the cgroup
# controllers and starts containerd.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/../guest/lib.sh"

bash "$HERE/build.sh"
out="$CACHE/testhost"
pkgs=(podman conmon runc containerd golang-github-containers-common golang-github-containers-image)
# Libraries the engines link that a plain Debian 12 may lack, by soname.
declare -A lib_pkg=(
  [libsubid.so.4]=libsubid4 [libgpgme.so.11]=libgpgme11 [libassuan.so.0]=libassuan0
  [libdevmapper.so.1.02.1]=libdevmapper1.02.1 [libseccomp.so.2]=libseccomp2
  [libglib-2.0.so.0]=libglib2.0-0 [libgpg-error.so.0]=libgpg-error0
  [libsystemd.so.0]=libsystemd0 [libudev.so.1]=libudev1 [libpcre2-8.so.0]=libpcre2-8-0
  [libselinux.so.1]=libselinux1 [libcap.so.2]=libcap2 [liblz4.so.1]=liblz4-1
  [libgcrypt.so.20]=libgcrypt20 [libzstd.so.1]=libzstd1 [liblzma.so.5]=liblzma5
)
debs=()
for p in "${pkgs[@]}"; do debs+=("$(fetch_deb "$p")"); done
stamp="$( (cat "$HERE/build-engines.sh" "$out/stamp"; printf '%s\n' "${debs[@]##*/}") | sha256sum | cut -c1-16)"
if [ -f "$out/engines.stamp" ] && [ "$(cat "$out/engines.stamp")" = "$stamp" ] && [ -f "$out/engines.cpio" ]; then
  exit 0
fi
step "building the test host's container-engine layer (podman, conmon, runc, containerd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pkgs" "$work/root"
for d in "${debs[@]}"; do dpkg-deb -x "$d" "$work/pkgs"; done
root="$work/root"
bins=(usr/bin/podman usr/bin/conmon usr/sbin/runc usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/bin/ctr)

# Shared libraries: resolved against the unpacked packages first; a soname
# the host lacks brings its package in, until nothing is missing.
libpath="$work/pkgs/usr/lib/x86_64-linux-gnu:$work/pkgs/lib/x86_64-linux-gnu"
for round in 1 2 3 4; do
  missing=$(for b in "${bins[@]}"; do LD_LIBRARY_PATH="$libpath" ldd "$work/pkgs/$b"; done |
    awk '/not found/ {print $1}' | sort -u)
  [ -n "$missing" ] || break
  for so in $missing; do
    [ -n "${lib_pkg[$so]:-}" ] || die "no Debian package known for $so (needed by the engines)"
    dpkg-deb -x "$(fetch_deb "${lib_pkg[$so]}")" "$work/pkgs"
  done
done
for b in "${bins[@]}"; do
  mkdir -p "$root/$(dirname "$b")"
  cp "$work/pkgs/$b" "$root/$b"
  LD_LIBRARY_PATH="$libpath" ldd "$work/pkgs/$b" | grep -oE '/[^ ]+' | while read -r lib; do
    dest="${lib#"$work/pkgs"}"
    [ -e "$root$dest" ] || { mkdir -p "$root$(dirname "$dest")"; cp -L "$lib" "$root$dest"; }
  done
done

# Configuration: Debian's, then this machine's needs on top.
mkdir -p "$root/etc/containers" "$root/usr/share/containers" "$root/etc/containerd"
cp -a "$work/pkgs/etc/containers/." "$root/etc/containers/"
cp -a "$work/pkgs/usr/share/containers/." "$root/usr/share/containers/"
cat > "$root/etc/containers/containers.conf" <<'EOF'
# The test host: no systemd, no network stack, a hard open-file limit of
# 1024 is what this kernel's default allows.
[containers]
netns = "none"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
default_sysctls = []

[engine]
cgroup_manager = "cgroupfs"
# runc cannot pivot_root out of an initramfs.
no_pivot_root = true
events_logger = "file"

[engine.runtimes]
condo = ["/usr/local/bin/condo-runtime"]
EOF
cat > "$root/etc/containers/storage.conf" <<'EOF'
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
cat > "$root/etc/containerd/config.toml" <<'EOF'
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# No CRI without a kubelet; ctr talks to the core services.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

# What a Kubernetes RuntimeClass "condo" would name (docs/oci.md):
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.condo]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.condo.options]
    BinaryName = "/usr/local/bin/condo-runtime"
EOF
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"

# The overlay module (storage for both engines).
kver=$(cat "$CACHE/cloud/version")
mod="$CACHE/cloud/modules/lib/modules/$kver/kernel/fs/overlayfs/overlay.ko"
mkdir -p "$root/lib/modules"
for ext in "" .xz .zst; do
  [ -f "$mod$ext" ] || continue
  case "$ext" in
    .xz) xz -dc "$mod$ext" > "$root/lib/modules/overlay.ko" ;;
    .zst) zstd -qdc "$mod$ext" > "$root/lib/modules/overlay.ko" ;;
    *) cp "$mod" "$root/lib/modules/overlay.ko" ;;
  esac
done

# A busybox root to import as an image (the test guests' own).
mkdir -p "$root/usr/local/share/condo-test"
tar -C "$CACHE/guest/rootdir" --exclude=./init --exclude=./lib/modules -cf "$root/usr/local/share/condo-test/busybox.tar" .

mkdir -p "$root/testhost"
cat > "$root/testhost/engines-init" <<'EOF'
#!/bin/sh
# Run by the test host's /init before the command: storage, cgroups,
# containerd.
insmod /lib/modules/overlay.ko 2>/dev/null
mkdir -p /var/lib/containers /var/lib/containerd /run/containerd /run/containers /var/tmp /etc/cni/net.d
mount -t tmpfs -o size=4g tmpfs /var/lib/containers
mount -t tmpfs -o size=4g tmpfs /var/lib/containerd
mount -t tmpfs tmpfs /var/tmp
# Terminals (podman -it, ctr -t, the runtime's console socket), if the
# base /init has not mounted them.
grep -q " /dev/pts " /proc/mounts || { mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666,mode=0620 devpts /dev/pts; }
echo "+cpu +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
ulimit -n 1024
containerd --config /etc/containerd/config.toml > /var/log-containerd.txt 2>&1 &
i=0
while [ ! -S /run/containerd/containerd.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -S /run/containerd/containerd.sock ] || { echo "testhost: containerd did not start" >&2; tail -5 /var/log-containerd.txt >&2; }
EOF
chmod 0755 "$root/testhost/engines-init"
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) > "$out/engines.cpio.tmp"
mv "$out/engines.cpio.tmp" "$out/engines.cpio"
echo "$stamp" > "$out/engines.stamp"
step "engine layer ready: $out/engines.cpio ($(du -m "$out/engines.cpio" | cut -f1) MiB)"
