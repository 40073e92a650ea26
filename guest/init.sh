#!/bin/sh
# /init of condo's test guests (busybox). See build-initramfs.sh.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
if [ -f /etc/modules-load ]; then
  while read -r m; do
    [ -f "/lib/modules/$m.ko" ] && insmod "/lib/modules/$m.ko" 2>/dev/null
  done < /etc/modules-load
fi
# condo.agent=1 starts the guest agent (docs/agent.md) beside this init.
case " $(cat /proc/cmdline) " in
  *" condo.agent=1 "*) /sbin/condo-agent & ;;
esac
echo "condo-guest: ready"

end=poweroff
for arg in $(cat /proc/cmdline); do
  case "$arg" in condo.end=*) end="${arg#condo.end=}" ;; esac
done

# The kernel passes the words after ` -- ` on its command line as our
# arguments (split on spaces; a double-quoted word keeps its spaces, quotes
# removed). They are joined and run by the shell, so `-- nproc; uname -r` and
# pipes work.
# Ctrl+Alt+Del powers the guest off: as init systems do, ask the kernel to
# send init SIGINT for it rather than reboot at once. The
# command runs in the background, with the console as its input, so that
# the trap fires at once, not when the command ends.
echo 0 > /proc/sys/kernel/ctrl-alt-del
trap 'echo "condo-guest: ctrl-alt-del"; poweroff -f' INT
if [ $# -gt 0 ]; then
  sh -c "$*" </dev/console &
  wait $!
  echo "condo-guest: exit=$?"
fi

case "$end" in
  reboot) reboot -f ;;
  panic) exit 1 ;; # init exiting makes the kernel panic
  wait) while :; do sleep 3600 & wait $!; done ;;
  shell) setsid cttyhack sh; poweroff -f ;;
  *) poweroff -f ;;
esac
sleep 5
