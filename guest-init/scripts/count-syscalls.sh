#!/bin/sh
# Count the guest syscalls of berth-guest-init's PID 1 happy path without a
# VM: run the real binary as PID 1 of throw-away pid/uts/net namespaces,
# chrooted into a fake initramfs, under strace. Every syscall with a host-wide
# effect is faked by strace (mount, the switch_root chroot, sethostname,
# reboot, ioperm) AND made impossible by dropping CAP_SYS_ADMIN, CAP_SYS_BOOT
# and CAP_SYS_RAWIO from the bounding set, so that nothing can touch the host
# even if injection failed (on many machines /dev/vda is the host's own root
# disk).
#
# Usage: guest-init/scripts/count-syscalls.sh [BINARY] [ARGV0] [UID]
#   BINARY defaults to the release musl build in $CARGO_TARGET_DIR (or
#   target/); ARGV0 (default "sh") is the app's command, looked up in PATH;
#   UID (default 0) is the app's uid and gid.
# Needs root, strace, unshare, setpriv and a static busybox (/bin/busybox).
set -eu

target=${CARGO_TARGET_DIR:-$(dirname "$0")/../../target}
bin=${1:-$target/x86_64-unknown-linux-musl/release/berth-guest-init}
argv0=${2:-sh}
uid=${3:-0}
fake=$(mktemp -d /tmp/gi-fake.XXXXXX)
chmod 755 "$fake"
trace=$fake.trace
trap 'rm -rf "$fake" "$trace"' EXIT

mkdir -p "$fake/berth" "$fake/dev" "$fake/bin" \
    "$fake/newroot/dev/pts" "$fake/newroot/dev/shm" \
    "$fake/newroot/tmp" "$fake/newroot/run" "$fake/newroot/proc" "$fake/newroot/sys"
mkfifo "$fake/dev/console"          # a tty would be the host's console
mknod -m 666 "$fake/dev/null" c 1 3
cp "$bin" "$fake/init"
cp /bin/busybox "$fake/bin/sh"
cat >"$fake/berth/pod.json" <<EOF
{"version":1,"name":"m","uuid":"0b9f3c2e-6a1d-4c8e-9f00-1234567890ab",
 "machine_id":"0b9f3c2e6a1d4c8e9f001234567890ab",
 "app":{"argv":["$argv0","-c","exit 3"],"env":[],"cwd":"/","user":{"uid":$uid,"gid":$uid}},
 "hostname":"m","rootfs":{"image":"/img"},"mounts":[],"network":{"mode":"none"}}
EOF

# The fake root's /newroot/dev entries exist already, so mkdir/symlink
# return EEXIST instead of creating: same syscall count.
set +e
strace -f -o "$trace" \
    -e inject=mount:retval=0 \
    -e inject=chroot:retval=0:when=2+ \
    -e inject=sethostname:retval=0 \
    -e inject=reboot:retval=0 \
    -e inject=ioperm:error=EPERM \
    unshare --pid --fork --uts --net \
    setpriv --bounding-set -sys_admin,-sys_boot,-sys_rawio \
    chroot "$fake" /init </dev/null >/dev/null 2>&1
rc=$?
set -e
echo "guest-init exit status (the app's): $rc"

# guest-init: from its execve to its exit. The app's child: up to its
# successful execve. Lines marked "diag" exist only because this harness has
# no tty console and no port access (the ENOTTY/EPERM warnings, the second
# TCSETS after the one on fd 0 failed, and the /dev/port fallback); in a VM
# they are replaced by nothing (the TCSETS on fd 0 and the status `out`
# succeed; the out is a VM exit, not a syscall) plus two
# (rt_sigaction for the probe guard armed after a successful ioperm, and
# musl's one-time rt_sigprocmask on the first handler). The execve of /init
# is the kernel's and exit_group is never reached in a VM (reboot).
awk '
    /execve\("\/init"/ && / = 0$/ { init = $1 }
    !init { next }
    / resumed>/ || /^[0-9]+ +(\+\+\+|---)/ { next }
    {
        diag = ($0 ~ /dev\/port|write\(2,|ioctl\(3, .*TCSETS/) ? "diag " : "     "
        if (diag != "     ") d++
    }
    $1 == init { print "init  " diag $0; n++; next }
    !child && $1 > init { child = $1 }
    $1 != child || done { next }
    { print "child " diag $0; c++; if ($0 ~ /execve\(/ && $0 !~ /= -1/) done = 1 }
    END {
        printf "\nguest-init: %d syscalls (incl. its execve and exit_group)\n", n
        printf "app child before exec: %d syscalls (incl. every execve attempt)\n", c
        printf "harness-only diagnostics among them: %d\n", d
    }
' "$trace"
