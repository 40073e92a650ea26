#!/bin/sh
# /init of the nested test host (L1): loads KVM, runs the command it was
# given, prints its exit status on a marker line and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup # as a current distribution mounts it (jail tests)
mount -t devtmpfs devtmpfs /dev
chmod 1777 /tmp # the initramfs root is already writable; --file paths under /tmp stay visible
mkdir -p /dev/shm /run && mount -t tmpfs tmpfs /dev/shm
mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666 devpts /dev/pts # pseudo-terminals (a jail's console)
mkdir -p /var && ln -sfn /run /var/run # as on Debian: iproute2 keeps named network namespaces in /var/run/netns
ln -sf /proc/self/fd /dev/fd 2>/dev/null
# A beat on the second serial port every 5 s: testhost/run stops a test
# host whose beats stop (the emulation stalled it).
sh -c 'while :; do echo . > /dev/ttyS1; sleep 5; done' </dev/null >/dev/null 2>&1 &
ip link set lo up 2>/dev/null
while read -r m; do
  insmod "/lib/modules/$m.ko" || echo "testhost: cannot load $m" >&2
done < /etc/modules-load
[ -c /dev/kvm ] || echo "testhost: /dev/kvm did not appear" >&2
[ -f /testhost/env ] && . /testhost/env
# The optional container-engine layer (testhost/build-engines.sh).
[ -x /testhost/engines-init ] && /testhost/engines-init
cd /tmp
echo "@@testhost-start"
sh /testhost/cmd
echo "@@testhost-exit=$?"
poweroff -f
