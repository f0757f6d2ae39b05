#!/usr/bin/env bash
# The whole test run: the host suite, then the real-kernel suite (both run
# even when the first fails). Reports land in .ci-host.json and .ci-kernel.json.
# The kernel suite boots $VFIO_MIG_KERNEL; when that is unset, the test
# kernel is built once into $VFIO_MIG_KERNEL_CACHE (default .cache/kernel;
# scripts/kernel/build-kernel.sh, about 10-15 minutes on 2 cores) and reused
# while its inputs are the same.
set -u
cd "$(dirname "$0")/.."
npm test
host=$?
kernel=0
if [ -z "${VFIO_MIG_KERNEL:-}" ]; then
  cache=${VFIO_MIG_KERNEL_CACHE:-.cache/kernel}
  if [ ! -f "$cache/bzImage" ]; then
    echo "test-all: VFIO_MIG_KERNEL is unset: building the test kernel into $cache (once; about 10-15 minutes on 2 cores)" >&2
  fi
  if bash scripts/kernel/build-kernel.sh "$cache"; then
    export VFIO_MIG_KERNEL=$(cd "$cache" && pwd)/bzImage
  else
    echo "test-all: could not build the test kernel; set VFIO_MIG_KERNEL to a prebuilt bzImage (README: The real-kernel test bed)" >&2
    kernel=1
  fi
fi
# The kernel suite's QEMU 7.2 and 10 (into .cache/; skipped when there). Without
# them its QEMU tests fail; the rest still runs.
qemu=0
if ! bash scripts/kernel/fetch-qemu.sh; then
  echo "test-all: could not fetch QEMU 7.2 and 10 (scripts/kernel/fetch-qemu.sh): the suite fails" >&2
  qemu=1
fi
# libvirt-daemon-system's AppArmor profiles, which the libvirt tests load in the guest.
if ! bash scripts/kernel/fetch-libvirt-apparmor.sh; then
  echo "test-all: could not fetch libvirt's AppArmor profiles (scripts/kernel/fetch-libvirt-apparmor.sh): the libvirt tests fail" >&2
  qemu=1
fi
if [ $kernel -eq 0 ]; then
  npm run test:kernel
  kernel=$?
fi
[ $host -eq 0 ] && [ $kernel -eq 0 ] && [ $qemu -eq 0 ]
