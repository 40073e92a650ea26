#!/bin/sh
# Runs inside the nested test host (benches/oci.sh starts it): podman with
# condo's runtime and with runc side by side on the same busybox image.
#   ROUNDS rounds of `podman run --rm IMAGE true`, alternating, wall time
#   each; then N containers of each kept running (`sleep`), the host memory
#   they take (MemAvailable before and after, over N) and the resident
#   memory of each container's own processes (condo: monitor and VMM;
#   runc: the container's process), conmon's beside it in both cases.
# Prints `round ...` lines and `mem ...` lines for benches/oci.sh.
set -eu
rounds="${ROUNDS:-5}" n="${N_CONTAINERS:-3}" image=localhost/busybox
mkdir -p /usr/local/bin /usr/local/lib/condo /etc/condo
ln -sf "$CONDO_BIN" /usr/local/bin/condo-runtime
cp "$CONDO_GUEST_VMLINUX" /usr/local/lib/condo/vmlinux
cp "$CONDO_GUEST_INITRAMFS" /usr/local/lib/condo/initramfs.cpio.gz
/usr/local/bin/condo-runtime check >/dev/null || { /usr/local/bin/condo-runtime check; exit 1; }
podman import /usr/local/share/condo-test/busybox.tar "$image" >/dev/null 2>&1
# busybox date has no %N: /proc/uptime counts in hundredths.
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
# One warm-up run each: podman's first run sets up its storage, condo's
# first run makes the cached root disk.
podman run --rm --runtime condo "$image" true
podman run --rm --runtime runc "$image" true
i=1
while [ "$i" -le "$rounds" ]; do
  for rt in condo runc; do
    t0=$(now_ms)
    podman run --rm --runtime "$rt" "$image" true
    t1=$(now_ms)
    echo "round $i $rt $((t1 - t0)) ms"
  done
  i=$((i + 1))
done
avail() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
rss_of() { # resident KiB of the processes whose command line matches $1
  total=0
  for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$c" in *"$1"*) r=$(awk '/^VmRSS:/ {print $2}' "$p/status" 2>/dev/null); total=$((total + ${r:-0})) ;; esac
  done
  echo "$total"
}
for rt in condo runc; do
  sync; echo 3 > /proc/sys/vm/drop_caches; sleep 2
  before=$(avail)
  j=1
  while [ "$j" -le "$n" ]; do
    podman run -d --name "mem-$rt-$j" --runtime "$rt" "$image" sleep 100000 >/dev/null
    j=$((j + 1))
  done
  sleep 5
  sync; echo 3 > /proc/sys/vm/drop_caches; sleep 2
  after=$(avail)
  if [ "$rt" = condo ]; then
    own=$(( $(rss_of "oci --root") + $(rss_of "run --config-file") ))
  else
    own=$(rss_of "sleep 100000")
  fi
  conmon=$(rss_of "conmon")
  echo "mem $rt containers=$n host_kib_per_container=$(((before - after) / n)) own_rss_kib_per_container=$((own / n)) conmon_rss_kib_per_container=$((conmon / n))"
  podman rm -f -t 0 $(j=1; while [ "$j" -le "$n" ]; do echo "mem-$rt-$j"; j=$((j + 1)); done) >/dev/null
done
