#!/usr/bin/env bash
# Build a small Debian 12 (bookworm) root filesystem that boots under systemd
# (`systemd-nspawn -b`, berth service pods) and runs nginx.service, for
# berth's tests and benchmarks. debootstrap (variant minbase) from the mirror
# the host's apt uses, plus systemd, systemd-sysv, dbus, nginx, iproute2,
# procps and curl, without recommends, docs, man pages or locales.
#
# The result is cached outside the clone under
#   ${BERTH_CACHE:-/var/cache/berth}/images/debian-<key>
# keyed by this script, debian-lib.sh, the package list, the mirror, the suite
# and the architecture; it is built in a temporary directory and renamed into
# place, so a path that exists is complete. Concurrent runs wait on a lock.
# Prints the rootfs path on the last line of stdout; progress goes to stderr.
#
#   images/debian.sh [--print-path]
#
#   --print-path   print the path the image has (or would have), build nothing
#
# Environment: BERTH_CACHE (default /var/cache/berth); BERTH_DEBIAN_MIRROR
# overrides the mirror read from /etc/apt/sources.list{,.d/*};
# BERTH_IMAGE_KEEP_FAILED=1 keeps a failed build's directory for debugging.
#
# The image: empty /etc/machine-id (berth writes one per pod), plain-file
# /etc/resolv.conf, hostname "debian", nginx.service enabled (Debian's default
# site, /var/www/html/index.nginx-debian.html), dpkg excludes for docs in
# /etc/dpkg/dpkg.cfg.d/01-berth-nodoc, no apt lists (run apt-get update first).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/debian-lib.sh"

suite=bookworm
packages=(systemd systemd-sysv dbus nginx iproute2 procps curl)
cache=${BERTH_CACHE:-/var/cache/berth}
arch=$(dpkg --print-architecture)
mirror=$(debian_mirror "$suite")
key=$( (cat "$here/debian.sh" "$here/debian-lib.sh"; echo "${packages[*]}|$mirror|$suite|$arch") |
    sha256sum | cut -c1-16)
out="$cache/images/debian-$key"

if [ "${1:-}" = "--print-path" ]; then echo "$out"; exit 0; fi
if [ -n "${1:-}" ]; then echo "usage: images/debian.sh [--print-path]" >&2; exit 2; fi
if [ -x "$out/usr/lib/systemd/systemd" ]; then echo "$out"; exit 0; fi

mkdir -p "$cache/images"
exec 9> "$cache/images/.debian.lock"
flock 9
if [ -x "$out/usr/lib/systemd/systemd" ]; then echo "$out"; exit 0; fi

if ! command -v debootstrap >/dev/null; then
    echo "images/debian.sh: installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
fi

start=$(date +%s)
tmp=$(mktemp -d "$cache/images/.debian-XXXXXX")
trap '[ -n "${BERTH_IMAGE_KEEP_FAILED:-}" ] && echo "images/debian.sh: kept $tmp" >&2 || debian_discard "$tmp"' EXIT
chmod 755 "$tmp"

echo "images/debian.sh: debootstrap --variant=minbase $suite from $mirror (downloads and unpacks ~90 packages, 1-3 min)" >&2
debootstrap --variant=minbase --arch="$arch" "$suite" "$tmp" "$mirror" >&2

echo "images/debian.sh: excluding docs, man pages and locales" >&2
debian_nodoc "$tmp"

echo "images/debian.sh: installing ${packages[*]}" >&2
debian_apt_install "$tmp" "${packages[@]}"

# Fail here, not at boot, if something the image promises is missing (-L:
# enablement links are absolute, so they dangle when seen from the host).
for f in usr/lib/systemd/systemd sbin/init usr/sbin/nginx lib/systemd/system/nginx.service \
    etc/systemd/system/multi-user.target.wants/nginx.service usr/bin/dbus-daemon \
    var/www/html/index.nginx-debian.html usr/bin/curl sbin/ip usr/bin/pgrep; do
    if [ ! -e "$tmp/$f" ] && [ ! -L "$tmp/$f" ]; then echo "images/debian.sh: /$f missing after install" >&2; exit 1; fi
done

debian_finish "$tmp" debian
mv "$tmp" "$out"
trap - EXIT
echo "images/debian.sh: built in $(($(date +%s) - start)) s, $(du -sh --apparent-size "$out" | cut -f1)" >&2
echo "$out"
