#!/bin/sh
# Build berth's guest kernel (an uncompressed vmlinux ELF) from Debian's
# linux-source-6.1, with kernel-config/berth.config applied on top of tinyconfig
# and kernel-config/patches/*.patch applied to the source.
#
# Usage: kernel-config/build.sh [--print-path]
#
# The result lives in ${BERTH_CACHE:-/var/cache/berth}/kernel/<hash>/{vmlinux,.config}
# where <hash> = sha256 over (berth.config, patches/*, build.sh, the
# linux-source-6.1 package version). A second run with the same inputs is a
# no-op. The vmlinux path is printed on the last line of stdout; progress and
# make output go to stderr. The build happens in a temporary directory next to
# the final one and is renamed into place, so an interrupted run leaves nothing
# that looks finished.
#
# Environment: BERTH_CACHE (cache root), JOBS (make -j, default nproc),
# KERNEL_SOURCE_TARBALL (default /usr/src/linux-source-6.1.tar.xz).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${BERTH_CACHE:-/var/cache/berth}/kernel
tarball=${KERNEL_SOURCE_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
pkg=linux-source-6.1
jobs=${JOBS:-$(nproc)}

print_only=0
case ${1:-} in
--print-path) print_only=1 ;;
"") ;;
-h | --help) sed -n '2,20p' "$0"; exit 0 ;;
*) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
esac

log() { echo "kernel-config/build.sh: $*" >&2; }

ensure_packages() {
    missing=""
    for p in "$pkg" flex bison bc libelf-dev libssl-dev make gcc xz-utils patch; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        log "installing:$missing"
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >&2
    fi
}

source_version() {
    dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || echo unknown
}

input_hash() {
    {
        echo "pkg=$pkg $(source_version)"
        for f in "$here/berth.config" "$here/build.sh" "$here"/patches/*.patch; do
            [ -e "$f" ] || continue
            echo "file=${f#"$here"/}"
            sha256sum < "$f"
        done
    } | sha256sum | cut -c1-16
}

if [ "$print_only" -eq 1 ]; then
    echo "$cache_root/$(input_hash)/vmlinux"
    exit 0
fi

out_dir=$cache_root/$(input_hash)
if [ -f "$out_dir/vmlinux" ] && [ -f "$out_dir/.config" ]; then
    log "cached: $out_dir"
    echo "$out_dir/vmlinux"
    exit 0
fi

[ -f "$tarball" ] || ensure_packages
ensure_packages
[ -f "$tarball" ] || { log "missing $tarball"; exit 1; }

mkdir -p "$cache_root"
work=$(mktemp -d "$cache_root/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "extracting $tarball into $work"
tar -xJf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n1)
[ -n "$src" ] || { log "no source tree in $tarball"; exit 1; }

for p in "$here"/patches/*.patch; do
    [ -e "$p" ] || continue
    log "applying $(basename "$p")"
    patch -d "$src" -p1 --forward --batch < "$p" >&2
done

log "configuring: tinyconfig + berth.config"
make -C "$src" -s tinyconfig >&2
(cd "$src" && KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m .config "$here/berth.config") >&2
make -C "$src" -s olddefconfig >&2
"$here/check-config.sh" "$src/.config" >&2

log "building vmlinux with -j$jobs (one progress line per 100 objects)"
start=$(date +%s)
# Keep the full log for failures, show a counter instead of thousands of lines.
{ make -C "$src" -j"$jobs" vmlinux 2>&1; echo $? > "$work/make.rc"; } | tee "$work/build.log" | awk '
    / CC | AS | LD | AR | HOSTCC / { n++; if (n % 100 == 0) { printf "  ... %d objects (%s)\n", n, $2; fflush() } }
    /: error:|Error [0-9]/ { print; fflush() }
    END { printf "  ... %d objects total\n", n }' >&2
if [ "$(cat "$work/make.rc")" != 0 ] || [ ! -f "$src/vmlinux" ]; then
    log "build failed; last lines of the log:"
    tail -n 40 "$work/build.log" >&2
    exit 1
fi
log "built in $(( $(date +%s) - start )) s"

stage=$work/out
mkdir -p "$stage"
cp "$src/vmlinux" "$stage/vmlinux"
cp "$src/.config" "$stage/.config"
rm -rf "$out_dir"
mv "$stage" "$out_dir"
echo "$out_dir/vmlinux"
