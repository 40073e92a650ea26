# Shared helpers for condo's guest-artifact and test-host scripts.
# CACHE lives outside the source tree; override with CONDO_CACHE.
CACHE="${CONDO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/condo}"
mkdir -p "$CACHE"
# Where cargo puts condo's binaries: .cargo/config.toml names the target.
BUILD="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/x86_64-unknown-linux-gnu"

step() { echo "condo: $*" >&2; }
die() { echo "condo: error: $*" >&2; exit 1; }

# fetch_deb PKG: downloads Debian package PKG (resolving virtual/meta packages
# to the newest candidate) into $CACHE/debs and prints its path.
fetch_deb() {
  local pkg="$1" ver file
  ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    apt-get update -q >/dev/null 2>&1 || true
    ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  fi
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "Debian package $pkg not found (apt-get update?)"
  file=$(ls "$CACHE/debs/${pkg}_"*"${ver#*:}_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$file" ]; then
    step "downloading $pkg $ver"
    (cd "$CACHE/debs" && apt-get download -q "$pkg=$ver" >/dev/null 2>&1) || die "cannot download Debian package $pkg"
    file=$(ls "$CACHE/debs/${pkg}_"*"${ver#*:}_"*.deb | head -1)
  fi
  echo "$file"
}

# depends_of PKG: the first linux-image dependency of a meta package.
depends_of() {
  apt-cache depends "$1" 2>/dev/null | awk '/Depends:/ {print $2}' | grep -m1 '^linux-image-' || true
}
