#!/bin/sh
# Runs inside the machine that has the working KVM (the nested test host or
# a hardware host): alternates condo and QEMU microvm on the same guest, raw
# disk image and TAP, ROUNDS times, and prints one line per measurement:
#   <vmm> <metric> <MB/s, or IOPS for *_iops>
# and "round done" after each round (both VMMs).
# Usage: io-rounds.sh CONDO QEMU VMLINUX INITRAMFS ROUNDS WORKDIR
set -eu
condo=$1 qemu=$2 kernel=$3 initrd=$4 rounds=$5 work=$6
mkdir -p "$work"
img="$work/disk.img"
dd if=/dev/zero of="$img" bs=1M count=256 2>/dev/null
# Link-local addresses: nothing leaves this machine.
if ! ip link show condobench0 >/dev/null 2>&1; then
  ip tuntap add dev condobench0 mode tap 2>/dev/null || tunctl -t condobench0 >/dev/null
  ip addr add 169.254.88.1/24 dev condobench0
  ip link set condobench0 up
fi
# No double quotes in the guest script: it travels as one quoted kernel
# argument. nc ends once its data is in the socket buffer, not at the
# host: the guest waits 5 s before powering off, or the tail of the
# transfer could die with it (the figure only counts if all 64 MiB came).
# Each line is "<metric> <MiB moved> <start> <end>" with times
# from /proc/uptime (10 ms resolution); the rate is worked out here.
guest='ip addr add 169.254.88.2/24 dev eth0; ip link set eth0 up; ping -c 1 -W 10 169.254.88.1 >/dev/null;
t() { read -r up idle < /proc/uptime; echo $up; };
a=$(t); dd if=/dev/zero of=/dev/vda bs=1M count=128 conv=fsync 2>/dev/null; echo seqwrite 128 $a $(t);
echo 3 > /proc/sys/vm/drop_caches;
a=$(t); dd if=/dev/vda of=/dev/null bs=1M count=128 2>/dev/null; echo seqread 128 $a $(t);
a=$(t); randio read /dev/vda 4000 >/dev/null && echo randread_iops 4000 $a $(t);
a=$(t); randio write /dev/vda 2000 >/dev/null && echo randwrite_iops 2000 $a $(t);
a=$(t); dd if=/dev/zero bs=64k count=1024 2>/dev/null | nc 169.254.88.1 PORT; echo nettx 64 $a $(t); sleep 5'
port=5000
for r in $(seq 1 "$rounds"); do
  for vmm in condo qemu; do
    rm -f "$work/netbytes"
    # A port per run: a connection cut short (a guest killed mid-transfer)
    # leaves its port unbindable for a while (busybox nc has no
    # SO_REUSEADDR).
    port=$((port + 1))
    cmdline="console=ttyS0 reboot=k panic=1 quiet -- \"$(echo "$guest" | sed "s/PORT/$port/")\""
    # busybox nc ends a connection when its own stdin ends: keep it open.
    ( sleep 900 | nc -l -p "$port" | wc -c > "$work/netbytes" ) &
    sink=$!
    sleep 0.2
    if [ "$vmm" = condo ]; then
      timeout -k 10 600 "$condo" run --kernel "$kernel" --initrd "$initrd" --cpus 2 --memory 256 \
        --disk "path=$img" --net tap=condobench0 --cmdline "$cmdline" > "$work/out" 2>&1 || true
    else
      timeout -k 10 600 "$qemu" -M microvm,x-option-roms=off,rtc=off,isa-serial=on -accel kvm -cpu host \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio -monitor none \
        -smp 2 -m 256 -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
        -drive id=d0,file="$img",format=raw,if=none -device virtio-blk-device,drive=d0 \
        -netdev tap,id=n0,ifname=condobench0,script=no,downscript=no \
        -device virtio-net-device,netdev=n0 > "$work/out" 2>&1 < /dev/null || true
    fi
    sleep 0.5
    pkill -f "sleep 900" 2>/dev/null || kill "$sink" 2>/dev/null || true
    # The listener may still be draining what arrived: give it 30 s. A
    # guest killed mid-transfer leaves the connection open: end the
    # listener then, or the next round cannot bind its port.
    i=0
    while kill -0 "$sink" 2>/dev/null && [ "$i" -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
    pkill -f "nc -l -p $port" 2>/dev/null || true
    wait "$sink" 2>/dev/null || true
    [ -n "${BENCH_DEBUG:-}" ] && { tail -8 "$work/out"; echo "netbytes=$(cat "$work/netbytes" 2>/dev/null)"; } >&2
    # The network figure only counts when all 64 MiB arrived.
    [ "$(cat "$work/netbytes" 2>/dev/null)" = 67108864 ] || sed -i '/^nettx /d' "$work/out"
    tr -d '\r' < "$work/out" | awk -v vmm="$vmm" '
      /^(seqwrite|seqread|nettx|randread_iops|randwrite_iops) [0-9]+ [0-9.]+ [0-9.]+$/ {
        d = $4 - $3; if (d <= 0) d = 0.01
        if ($1 ~ /iops/) printf "%s %s %.0f\n", vmm, $1, $2 / d
        else printf "%s %s %.1f\n", vmm, $1, $2 * 1.048576 / d }'
  done
  echo "round done"
done
