#!/bin/sh
# PID 1 of the test guest (see test/kernel/run-vm.mjs). The host's root is
# the guest's root, read-only; the project and an output folder are shared
# writable. Creates two mtty devices of one type, runs the kernel suite,
# and leaves its report in the output folder. Exiting ends the VM.
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
echo "VFIOMIG: booted $(uname -r)"
OPTS=trans=virtio,version=9p2000.L,msize=512000
# The project may live under /tmp, now hidden by the tmpfs: recreate its mount point there.
[ -d "$VFIOMIG_PROJECT" ] || mkdir -p "$VFIOMIG_PROJECT"
mount -t 9p -o $OPTS proj "$VFIOMIG_PROJECT" || { echo "VFIOMIG: cannot mount the project"; exit 1; }
mkdir -p /tmp/out && mount -t 9p -o $OPTS out /tmp/out || { echo "VFIOMIG: cannot mount the output folder"; exit 1; }
TYPE=/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2
export VFIOMIG_A=83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
export VFIOMIG_B=83b8f4f2-509f-382f-3c1e-e6bfe0fa1002
for u in $VFIOMIG_A $VFIOMIG_B; do
  echo $u > $TYPE/create || { echo "VFIOMIG: cannot create mtty $u"; exit 1; }
done
echo "VFIOMIG: devices $(ls /dev/vfio/devices | tr '\n' ' ')"
cd "$VFIOMIG_PROJECT" || exit 1
export HOME=/tmp CI=true NO_COLOR=1
T0=$(date +%s)
if [ -n "$VFIOMIG_CMD" ]; then sh -c "$VFIOMIG_CMD"; echo "VFIOMIG: command exited $?"; sync; exit 0; fi
# VFIOMIG_CONFIG: another vitest config to run instead (npm run bench -- --kernel gives bench/kernel's).
node node_modules/vitest/vitest.mjs run --config "${VFIOMIG_CONFIG:-test/kernel/vitest.config.ts}" \
  --reporter=default --reporter=json --outputFile.json=/tmp/out/kernel.json ${VFIOMIG_FILTER:+-t "$VFIOMIG_FILTER"}
echo "VFIOMIG: suite exited $? after $(( $(date +%s) - T0 )) s"
sync
