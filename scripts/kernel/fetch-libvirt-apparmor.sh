#!/usr/bin/env bash
# Fetches the AppArmor profiles of Debian's libvirt-daemon-system, of the
# version of the installed libvirt-daemon (the libvirtd the kernel suite runs
# in the guest), and unpacks only them, never into the system:
#   .cache/libvirt-apparmor/etc/apparmor.d/{usr.sbin.libvirtd,usr.lib.libvirt.virt-aa-helper,
#                                          abstractions/libvirt-qemu,libvirt/TEMPLATE.qemu,...}
# test/kernel/libvirt.ktest.ts loads them in the guest as that package's
# postinst would on a host. Idempotent: the same version is left alone.
# Usage: scripts/kernel/fetch-libvirt-apparmor.sh [CACHE_DIR]   (default: .cache)
set -euo pipefail
case ${1:-} in -*) echo "usage: $0 [CACHE_DIR]   (default: .cache)" >&2; exit 2 ;; esac
cd "$(dirname "$0")/../.."
cache=$(mkdir -p "${1:-.cache}" && cd "${1:-.cache}" && pwd)
out=$cache/libvirt-apparmor
say() { echo "fetch-libvirt-apparmor: $*" >&2; }
ver=$(dpkg-query -W -f='${Version}' libvirt-daemon 2>/dev/null) ||
  { say "libvirt-daemon is not installed (apt-get install --no-install-recommends libvirt-daemon)"; exit 1; }
if [ "$(cat "$out/version" 2>/dev/null)" = "$ver" ]; then say "$out: $ver already there"; exit 0; fi
dl=$(mktemp -d)
trap 'rm -rf "$dl" "$out.part"' EXIT
# A fresh machine's package lists may not know it yet: update them once (root only) and retry.
( cd "$dl" && { apt-get download -qq "libvirt-daemon-system=$ver" 2>/dev/null ||
  { [ "$(id -u)" -eq 0 ] && apt-get update -qq && apt-get download -qq "libvirt-daemon-system=$ver"; }; } ) ||
  { say "apt-get download libvirt-daemon-system=$ver failed"; exit 1; }
rm -rf "$out.part" && mkdir -p "$out.part"
dpkg-deb --fsys-tarfile "$dl"/libvirt-daemon-system_*.deb | tar -x -C "$out.part" ./etc/apparmor.d
echo "$ver" > "$out.part/version"
rm -rf "$out" && mv "$out.part" "$out"
say "$out: libvirt-daemon-system $ver's profiles"
