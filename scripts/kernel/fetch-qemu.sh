#!/usr/bin/env bash
# Fetches Debian's QEMU 7.2 (bookworm) and QEMU 10 (bookworm-backports) and
# unpacks each beside the other, never into the system:
#   .cache/qemu-7.2/usr/bin/qemu-system-x86_64
#   .cache/qemu-10/usr/bin/qemu-system-x86_64
# with a private apt configuration (its own sources.list, state and cache
# under .cache/apt; the mirror the system's apt already uses; Debian's
# archive keyring), `apt-get download` and `dpkg -x`. Idempotent: a tree
# that is already there is left alone. Run them as the kernel tests do:
#   QEMU_MODULE_DIR=$T/usr/lib/x86_64-linux-gnu/qemu \
#     $T/usr/bin/qemu-system-x86_64 -L $T/usr/share/qemu -L /usr/share/seabios ...
# (the modules dir keeps one version from loading the other's modules; the
# packaged bios.bin is a link into the seabios package, hence the second -L).
# Usage: scripts/kernel/fetch-qemu.sh [CACHE_DIR]   (default: .cache)
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=$(mkdir -p "${1:-.cache}" && cd "${1:-.cache}" && pwd)
say() { echo "fetch-qemu: $*" >&2; }
PKGS=(qemu-system-x86 qemu-system-common qemu-system-data)
# suite:directory:version the binary must report
TARGETS=("bookworm:qemu-7.2:7.2" "bookworm-backports:qemu-10:10.")
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

have() { # DIR VERSION: the binary is there and reports that version
  [ -x "$1/usr/bin/qemu-system-x86_64" ] &&
    QEMU_MODULE_DIR="$1/usr/lib/x86_64-linux-gnu/qemu" "$1/usr/bin/qemu-system-x86_64" --version 2>/dev/null | grep -q "version $2"
}
todo=()
for t in "${TARGETS[@]}"; do
  IFS=: read -r suite dir ver <<<"$t"
  if have "$cache/$dir" "$ver"; then say "$cache/$dir: already there"; else todo+=("$t"); fi
done
[ ${#todo[@]} -eq 0 ] && exit 0

[ -f "$KEYRING" ] || { say "no $KEYRING (apt-get install debian-archive-keyring)"; exit 1; }
command -v gpgv >/dev/null || { say "apt needs gpgv to check the archive's signature (apt-get install gpgv)"; exit 1; }
# The Debian mirror the system already uses (deb822 or one-line sources).
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
[ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
[ -n "$mirror" ] || { say "found no Debian mirror in /etc/apt/sources.list{,.d}"; exit 1; }

apt=$cache/apt
mkdir -p "$apt/etc/preferences.d" "$apt/etc/sources.list.d" "$apt/state/lists/partial" "$apt/cache/archives/partial" "$apt/dl"
cat > "$apt/etc/sources.list" <<SRC
deb [signed-by=$KEYRING] $mirror bookworm main
deb [signed-by=$KEYRING] $mirror bookworm-backports main
SRC
: > "$apt/state/status"
opts=(
  -o "Dir::Etc::SourceList=$apt/etc/sources.list"
  -o "Dir::Etc::SourceParts=$apt/etc/sources.list.d"
  -o "Dir::Etc::Preferences=$apt/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
  -o "Dir::State=$apt/state"
  -o "Dir::State::status=$apt/state/status"
  -o "Dir::Cache=$apt/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)
say "apt-get update (private sources: bookworm, bookworm-backports)"
apt-get "${opts[@]}" update -qq
for t in "${todo[@]}"; do
  IFS=: read -r suite dir ver <<<"$t"
  dl=$apt/dl/$dir
  rm -rf "$dl" "$cache/$dir.part" && mkdir -p "$dl"
  say "apt-get download ${PKGS[*]} from $suite"
  ( cd "$dl" && apt-get "${opts[@]}" download -qq "${PKGS[@]/%//$suite}" )
  for deb in "$dl"/*.deb; do dpkg -x "$deb" "$cache/$dir.part"; done
  rm -rf "$cache/$dir" && mv "$cache/$dir.part" "$cache/$dir" && rm -rf "$dl"
  have "$cache/$dir" "$ver" || {
    say "$cache/$dir/usr/bin/qemu-system-x86_64 does not run as QEMU $ver; missing libraries:"
    ldd "$cache/$dir/usr/bin/qemu-system-x86_64" | grep 'not found' >&2 || true
    exit 1
  }
  say "$cache/$dir: $(QEMU_MODULE_DIR="$cache/$dir/usr/lib/x86_64-linux-gnu/qemu" "$cache/$dir/usr/bin/qemu-system-x86_64" --version | head -1)"
done
