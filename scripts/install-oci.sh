#!/usr/bin/env bash
# Installs condo's OCI runtime for podman and containerd (docs/oci.md):
#   /usr/local/bin/condo                      the binary (release build)
#   /usr/local/bin/condo-vmm                  the lean binary each VMM runs as
#   /usr/local/bin/condo-runtime -> condo     the name engines call
#   /usr/local/lib/condo/vmlinux              the guest kernel
#   /usr/local/lib/condo/initramfs.cpio.gz    the guest initramfs, with the agent
# then runs `condo-runtime check` and prints the engines' configuration.
#   scripts/install-oci.sh [PREFIX]           (default /usr/local)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. guest/lib.sh
prefix="${1:-/usr/local}"

eval "$(bash guest/build.sh)"
step "building condo (release)"
cargo build --release --locked -q -p condo
install -d "$prefix/bin" "$prefix/lib/condo"
install -m 0755 "$BUILD/release/condo" "$prefix/bin/condo"
# The lean binary every VMM process runs as (condo execs it when it is beside it).
install -m 0755 "$BUILD/release/condo-vmm" "$prefix/bin/condo-vmm"
ln -sf condo "$prefix/bin/condo-runtime"
install -m 0644 "$CONDO_GUEST_VMLINUX" "$prefix/lib/condo/vmlinux"
install -m 0644 "$CONDO_GUEST_INITRAMFS" "$prefix/lib/condo/initramfs.cpio.gz"
if [ "$prefix" != /usr/local ] && [ ! -e /etc/condo/oci.json ]; then
  install -d /etc/condo
  printf '{"kernel": "%s", "initrd": "%s"}\n' \
    "$prefix/lib/condo/vmlinux" "$prefix/lib/condo/initramfs.cpio.gz" > /etc/condo/oci.json
fi
"$prefix/bin/condo-runtime" check || true
cat <<EOF

podman: add to /etc/containers/containers.conf
  [engine.runtimes]
  condo = ["$prefix/bin/condo-runtime"]
then: podman run --runtime condo IMAGE CMD

containerd: ctr run --runtime io.containerd.runc.v2 --runc-binary $prefix/bin/condo-runtime IMAGE ID CMD
(a Kubernetes RuntimeClass: see docs/oci.md)
EOF
