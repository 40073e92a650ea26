#!/usr/bin/env bash
# Installs the Debian packages condo's build, guest artifacts and test host need.
# Idempotent: does nothing when everything is already present.
set -euo pipefail

PKGS=(
  qemu-system-x86 busybox-static cpio xz-utils zstd kmod e2fsprogs
  flex bison bc libelf-dev libssl-dev make gcc libc6-dev
  curl iproute2 socat jq nftables
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "condo: installing Debian packages: ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
