#!/usr/bin/env bash
# Build a minimal busybox root filesystem from Debian's busybox-static, for
# berth's tests, benchmarks and demos. The result is cached outside the clone,
# keyed by the hash of this script and the busybox package version, so later
# runs are instant. Prints the rootfs path on the last line of stdout.
#
#   images/busybox.sh [--print-path]
#
# Environment: BERTH_CACHE (default /var/cache/berth).
set -euo pipefail

cache=${BERTH_CACHE:-/var/cache/berth}
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
    echo "images/busybox.sh: installing busybox-static" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2
fi
bb=$(command -v busybox)
if ldd "$bb" >/dev/null 2>&1; then
    echo "images/busybox.sh: $bb is not statically linked (install busybox-static)" >&2
    exit 1
fi
version=$(dpkg-query -W -f='${Version}' busybox-static)
key=$( (cat "$0"; echo "$version") | sha256sum | cut -c1-16)
out="$cache/images/busybox-$key"

if [ "${1:-}" = "--print-path" ]; then echo "$out"; exit 0; fi
if [ -x "$out/bin/busybox" ]; then echo "$out"; exit 0; fi

mkdir -p "$cache/images"
tmp=$(mktemp -d "$cache/images/.busybox-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "images/busybox.sh: building busybox rootfs ($version)" >&2
mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp,var/www,proc,sys,dev,run,home}
chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
chmod 700 "$tmp/root"
cp "$bb" "$tmp/bin/busybox"
n=0
for applet in $("$bb" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$tmp/bin/$applet" ] || ln -s busybox "$tmp/bin/$applet"
    n=$((n + 1))
done
cat > "$tmp/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
app:x:1000:1000:app:/home:/bin/sh
PW
cat > "$tmp/etc/group" <<'GR'
root:x:0:
daemon:x:1:
tty:x:5:
nogroup:x:65534:
app:x:1000:
GR
echo "busybox" > "$tmp/etc/hostname"
echo "hello from berth" > "$tmp/var/www/index.html"
mv "$tmp" "$out"
trap - EXIT
chmod 755 "$out"
echo "images/busybox.sh: $n applets" >&2
echo "$out"
