#!/usr/bin/env bash
# Builds the real-kernel test bed: a Linux 6.12 bzImage (Debian's
# linux-source-6.12) that boots under qemu-system-x86_64 with VFIO (legacy
# group/container and iommufd cdev), mdev, the mtty sample driver and mbig
# (mbig.patch: a copy of mtty with N MiB of device memory in its migration
# state) built in, plus 9p over virtio so the guest can use the host's root
# filesystem read-only. tinyconfig + fragment.config; no modules, no initrd.
#
# Usage: scripts/kernel/build-kernel.sh OUT_DIR
#   writes OUT_DIR/bzImage, OUT_DIR/kernel.config and OUT_DIR/build.stamp
#   (a digest of what the image is made from: a second run with the same
#   inputs does nothing). About 10-15 minutes on 2 idle cores (~13.5 CPU
#   minutes); ~2 GB of scratch space under TMPDIR while it runs.
# Environment: LINUX_SOURCE_TAR  a linux-source-6.12 tarball to use instead
#              of /usr/src/linux-source-6.12.tar.xz or a downloaded package;
#              KERNEL_JOBS        make -j (default: number of CPUs).
# Needs Debian/Ubuntu with apt. Missing build tools are installed when run as
# root; otherwise the script names the apt-get command and stops.
set -euo pipefail
out=${1:?usage: build-kernel.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
say() { echo "build-kernel: $*" >&2; }

# Build tools (the kernel's own build needs flex, bison, bc, libelf for objtool).
tools=(build-essential flex bison bc libelf-dev libssl-dev xz-utils)
missing=()
for p in "${tools[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing build tools; run: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel source: Debian's linux-source-6.12 (the tree the FSM fixture was
# generated from). Downloaded as a package into the output directory when it
# is not installed, so no root is needed for this step.
mkdir -p "$out"
out=$(cd "$out" && pwd)
tarball=${LINUX_SOURCE_TAR:-/usr/src/linux-source-6.12.tar.xz}
if [ ! -f "$tarball" ]; then
  tarball=$out/linux-source-6.12.tar.xz
  if [ ! -f "$tarball" ]; then
    say "downloading Debian's linux-source-6.12"
    dl=$(mktemp -d)
    # A fresh machine's package lists may not know it yet: update them once (root only) and retry.
    ( cd "$dl" && { apt-get download -qq linux-source-6.12 2>/dev/null ||
      { [ "$(id -u)" -eq 0 ] && apt-get update -qq && apt-get download -qq linux-source-6.12; }; } ) || {
      say "apt-get download linux-source-6.12 failed (on Debian 12 it is in bookworm-security / bookworm-backports; run apt-get update first)"
      exit 1
    }
    dpkg-deb --fsys-tarfile "$dl"/linux-source-6.12_*.deb | tar -xO ./usr/src/linux-source-6.12.tar.xz > "$tarball.part"
    mv "$tarball.part" "$tarball"
    rm -rf "$dl"
  fi
fi

# Skip the build when the image was made from the same inputs. Bump RECIPE
# when a change to the steps below changes the image.
RECIPE=1
stamp=$( { echo "recipe $RECIPE"; sha256sum "$here/fragment.config" "$here/mbig.patch" | cut -d' ' -f1; stat -c %s "$tarball"; } | sha256sum | cut -d' ' -f1)
if [ -f "$out/bzImage" ] && [ "$(cat "$out/build.stamp" 2>/dev/null)" = "$stamp" ]; then
  say "$out/bzImage is up to date"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "unpacking $tarball"
tar -C "$work" -xf "$tarball"
cd "$work"/linux-source-6.12
patch -p1 -s < "$here/mbig.patch"
make tinyconfig >/dev/null
./scripts/kconfig/merge_config.sh -m .config "$here/fragment.config" >/dev/null
make olddefconfig >/dev/null
# Every option the fragment sets must survive olddefconfig (an unmet dependency drops it silently).
while IFS= read -r line; do
  case $line in
    CONFIG_*=n) grep -qx "# ${line%=n} is not set" .config || ! grep -q "^${line%=n}=" .config ;;
    CONFIG_*) grep -qxF "$line" .config ;;
    *) true ;;
  esac || { say "fragment.config: $line did not survive the merge"; exit 1; }
done < "$here/fragment.config"
grep -q '^CONFIG_CRC32=y' .config || { say "the merged config lacks CONFIG_CRC32=y (mbig)"; exit 1; }
say "compiling with make -j${KERNEL_JOBS:-$(nproc)} (about 10-15 minutes on 2 cores)"
make -j"${KERNEL_JOBS:-$(nproc)}" bzImage >/dev/null
cp arch/x86/boot/bzImage "$out/bzImage.part"
cp .config "$out/kernel.config"
mv "$out/bzImage.part" "$out/bzImage"
echo "$stamp" > "$out/build.stamp"
say "built $out/bzImage ($(make -s kernelrelease))"
