#!/usr/bin/env bash
# A systemd-booted test host for berth's host-integration tests: the Debian
# image of images/debian.sh plus what berth needs at run time, booted with
# `systemd-nspawn -b` in the background, so that systemd, its bus,
# systemd-machined and journald are the real programs even on machines whose
# PID 1 is not systemd. See tests/testhost/README.md.
#
#   testhost.sh build
#       Build (or find) the cached image; print its path on the last line.
#   testhost.sh start NAME [--bind SRC[:DST]]... [--bind-ro SRC[:DST]]...
#       Boot test host NAME and wait until its systemd reports "running" or
#       "degraded"; print the container's leader pid (its PID 1 seen from
#       the host) on the last line. Idempotent: a running NAME is reused
#       (the options of that start stay).
#   testhost.sh exec NAME [--env K=V]... [--scope] [--property P=V]... [--] CMD [ARG]...
#       Run CMD inside NAME: nsenter into all of its namespaces, joined to
#       the cgroups of its PID 1 (init.scope), environment reset to PATH,
#       HOME=/root, LANG, TERM, container= and the --env values. --scope runs
#       CMD in a transient scope unit of its own (systemd-run --scope inside;
#       needed when systemd or machined must see CMD as a unit of its own),
#       --property P=V sets a property of that scope (implies --scope; e.g.
#       Delegate=yes, MemoryMax=64M). Exits with CMD's exit code;
#       stdin/stdout/stderr are passed on.
#   testhost.sh stop NAME
#       Power NAME off (SIGTERM to systemd-nspawn: orderly halt), SIGKILL
#       after BERTH_TESTHOST_STOP_TIMEOUT seconds, remove its cgroups and
#       state. Idempotent: stopping a stopped NAME succeeds.
#   testhost.sh pid NAME
#       Print the leader pid if NAME is running, else exit 1.
#   testhost.sh list
#       Print the running test hosts: NAME LEADER-PID.
#
# NAME: 1-32 characters [A-Za-z0-9_-], starting with a letter or digit.
#
# Inside: the container has its own network namespace with only loopback
# (--private-network; berth creates its bridge, veths, taps and nftables
# rules there, isolated from the host and from other test hosts),
# --capability=all, /dev/kvm, /dev/net/tun and /dev/fuse bound in, the root
# file system a tmpfs overlay over the image (--volatile=overlay: the image
# stays clean), /var/lib/berth a fresh directory on the host's disk (overlayfs
# cannot use an overlayfs upper layer), ${BERTH_CACHE} read-only at the same
# path (test images, guest kernels), and, if BERTH_INSTALL_DIR is set, its
# bin/ at /usr/local/bin and lib/berth/ at /usr/local/lib/berth (read-only;
# where berth looks for its stage1s, guest kernel and guest-init).
#
# Environment:
#   BERTH_CACHE                 image cache (default /var/cache/berth)
#   BERTH_INSTALL_DIR           berth install tree to bind in (bin/, lib/berth/)
#   BERTH_TESTHOST_STATE        state directory (default /run/berth-testhost)
#   BERTH_TESTHOST_TIMEOUT      start: seconds to wait for systemd (default 90)
#   BERTH_TESTHOST_STOP_TIMEOUT stop: seconds before SIGKILL (default 30)
#   BERTH_TESTHOST_CGROUP       start: the container's cgroup layout on a
#                               hybrid host (see README.md): "hybrid-rw"
#                               (default; nspawn's hybrid layout with the v1
#                               controller mounts remounted read-write before
#                               the container's systemd starts, so it and
#                               berth can create cgroups and apply limits),
#                               "hybrid" (nspawn's stock layout: v1
#                               controllers read-only) or "unified"
#                               (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1: pure
#                               cgroup2, but without controllers here)
#
# Exit codes: 0 success; 1 failure (the reason on stderr); 2 usage; exec:
# CMD's exit code, 125 if it could not be started, 127 if not found.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/images/debian-lib.sh"

cache=${BERTH_CACHE:-/var/cache/berth}
state_root=${BERTH_TESTHOST_STATE:-/run/berth-testhost}
# What berth needs at run time inside, beyond the base image: machined,
# machinectl and nspawn (systemd-container), nft (nftables, --net private),
# e2fsprogs (kvm stage1's ext4 rootfs), ping for network tests, strace and
# less for debugging.
packages=(systemd-container nftables dbus curl iproute2 procps e2fsprogs iputils-ping kmod strace less)

die() { echo "testhost: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; exit 2; }

check_name() {
    [[ ${1:-} =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$ ]] || { echo "testhost: invalid NAME '${1:-}' (1-32 of [A-Za-z0-9_-])" >&2; exit 2; }
}

# ---------------------------------------------------------------- build ---

image_build() {
    local base key out tmp
    base=$(bash "$repo/images/debian.sh" | tail -n 1)
    # Keyed by what goes into the image, not by the rest of this script.
    key=$( (declare -f image_build configure_image; cat "$repo/images/debian-lib.sh"; echo "$base|${packages[*]}") |
        sha256sum | cut -c1-16)
    out="$cache/images/testhost-$key"
    if [ -x "$out/usr/bin/machinectl" ]; then echo "$out"; return 0; fi
    mkdir -p "$cache/images"
    exec 8> "$cache/images/.testhost.lock"
    flock 8
    if [ -x "$out/usr/bin/machinectl" ]; then echo "$out"; return 0; fi
    local start=$SECONDS
    tmp=$(mktemp -d "$cache/images/.testhost-XXXXXX")
    trap 'debian_discard "$tmp"' EXIT
    echo "testhost: copying $base" >&2
    cp -a --reflink=auto "$base/." "$tmp/"
    echo "testhost: installing ${packages[*]}" >&2
    debian_apt_install "$tmp" "${packages[@]}"
    configure_image "$tmp"
    debian_finish "$tmp" testhost
    mv "$tmp" "$out"
    trap - EXIT
    echo "testhost: image built in $((SECONDS - start)) s, $(du -sh --apparent-size "$out" | cut -f1)" >&2
    echo "$out"
}

# The test host boots multi-user.target without the base image's nginx,
# timers and gettys; machined is bus-activated as shipped.
configure_image() {
    local root=$1 u
    ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
    for u in nginx.service e2scrub_reap.service; do
        rm -f "$root/etc/systemd/system/multi-user.target.wants/$u"
    done
    rm -rf "$root/etc/systemd/system/timers.target.wants" "$root/etc/systemd/system/getty.target.wants"
    # hybrid-rw: make the v1 controller mounts writable before systemd starts
    # (nspawn mounts them read-only); run as the container's init, then exec
    # systemd. Unused in the other modes.
    mkdir -p "$root/usr/local/lib/testhost"
    cat > "$root/usr/local/lib/testhost/init" <<'EOF'
#!/bin/sh
# testhost hybrid-rw: remount nspawn's read-only cgroup v1 controller
# hierarchies read-write (the container has CAP_SYS_ADMIN), then boot systemd.
# Nothing to do when /sys/fs/cgroup is not nspawn's tmpfs (a cgroup2 host).
[ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] || exec /lib/systemd/systemd "$@"
mount -o remount,rw,nosuid,nodev,noexec,mode=755 /sys/fs/cgroup
for m in /sys/fs/cgroup/*; do
    [ -L "$m" ] && continue
    mountpoint -q "$m" && mount -o remount,bind,rw,nosuid,nodev,noexec "$m"
done
mount -o remount,ro,nosuid,nodev,noexec,mode=755 /sys/fs/cgroup
exec /lib/systemd/systemd "$@"
EOF
    chmod 755 "$root/usr/local/lib/testhost/init"
}

# --------------------------------------------------------------- cgroups ---

# mount_of ID: the host mount point of a cgroup hierarchy (the mount of its
# root), ID as in /proc/PID/cgroup: "-" for cgroup2 (the "0::" line), else a
# v1 hierarchy's first controller or its name=... option.
mount_of() {
    awk -v id="$1" '{
        for (i = 7; $i != "-"; i++) ; fs = $(i + 1); n = split($(i + 3), o, ",")
        if ($4 != "/") next
        if (id == "-") { if (fs == "cgroup2") { print $5; exit } ; next }
        if (fs != "cgroup") next
        for (j = 1; j <= n; j++) if (o[j] == id) { print $5; exit }
    }' /proc/self/mountinfo
}

# cgroup_paths PID: "MOUNTPOINT/PATH" of PID's cgroup in every hierarchy.
cgroup_paths() {
    local line ctl path id m
    while IFS= read -r line; do
        ctl=${line#*:}; path=${ctl#*:}; ctl=${ctl%%:*}
        id=${ctl%%,*}; [ -z "$id" ] && id=-
        m=$(mount_of "$id") || true
        [ -n "$m" ] && echo "$m$path"
    done < "/proc/$1/cgroup"
}

# The instance cgroup: below the caller's own cgroup in every hierarchy, so
# accounting and limits the caller is under keep applying.
instance_cgroups() { # NAME -> dirs
    local d
    for d in $(cgroup_paths self); do echo "${d%/}/berth-testhost-$1"; done
}

# make_cgroup DIR: mkdir; a v1 cpuset needs cpus and mems before it takes tasks.
make_cgroup() {
    mkdir -p "$1" || return 1
    local f
    for f in cpuset.cpus cpuset.mems; do
        if [ -f "$1/$f" ] && [ -z "$(cat "$1/$f")" ]; then
            cat "$(dirname "$1")/$f" > "$1/$f" || return 1
        fi
    done
}

remove_cgroup_tree() {
    local d=$1
    [ -d "$d" ] || return 0
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$d" ]
}

# ---------------------------------------------------------------- state ---

sdir() { echo "$state_root/$1"; }

# lock NAME: serialize start and stop of one NAME (the lock file outlives
# the state directory; fd 7 is closed for the container's processes).
lock() {
    mkdir -p "$state_root"
    exec 7> "$state_root/.$1.lock"
    flock 7
}

# running NAME: succeeds if NAME's nspawn and leader are alive and are the
# processes we started (start times recorded); sets sup and leader.
running() {
    local s
    s=$(sdir "$1")
    [ -f "$s/supervisor" ] && [ -f "$s/leader" ] || return 1
    read -r sup sup_start < "$s/supervisor"
    read -r leader leader_start < "$s/leader"
    [ "$(proc_start "$sup")" = "$sup_start" ] && [ "$(proc_start "$leader")" = "$leader_start" ]
}
# proc_start PID: its start time (clock ticks since boot), empty if it does
# not exist or is a zombie (nspawn's parent is whoever reaps orphans).
proc_start() { awk '{ sub(/^.*\) /, ""); if ($1 != "Z" && $1 != "X") print $20 }' "/proc/$1/stat" 2>/dev/null || true; }
# alive PID: exists and is not a zombie.
alive() { [ -n "$(proc_start "$1")" ]; }

# --------------------------------------------------------------- start ----

cmd_start() {
    local name=$1; shift
    check_name "$name"
    local -a binds=()
    while [ $# -gt 0 ]; do
        case $1 in
        --bind | --bind-ro)
            [ $# -ge 2 ] || usage
            [ -e "${2%%:*}" ] || die "$1 ${2}: ${2%%:*} does not exist"
            binds+=("$1=$2"); shift 2 ;;
        *) usage ;;
        esac
    done
    lock "$name"
    if running "$name"; then echo "$leader"; return 0; fi
    # Leftovers of a test host that died or was killed: processes, cgroups, state.
    cmd_stop "$name" >/dev/null 2>&1 || true

    local mode=${BERTH_TESTHOST_CGROUP:-hybrid-rw}
    local -a env=() init=()
    case $mode in
    hybrid) ;;
    hybrid-rw) init=(/usr/local/lib/testhost/init) ;;
    unified) env=(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) ;;
    *) die "BERTH_TESTHOST_CGROUP=$mode: expected hybrid, hybrid-rw or unified" ;;
    esac
    command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing (apt-get install systemd-container)"
    local img s
    img=$(image_build | tail -n 1)
    s=$(sdir "$name")
    mkdir -p "$s/var-lib-berth"
    echo "$mode" > "$s/mode"

    local -a args=(-q --register=no --keep-unit --capability=all -M "$name" -D "$img"
        --volatile=overlay --private-network --link-journal=no --console=pipe
        --resolv-conf=off --timezone=off
        --bind="$s/var-lib-berth:/var/lib/berth")
    local dev
    for dev in /dev/kvm /dev/net/tun /dev/fuse; do [ -c "$dev" ] && args+=(--bind="$dev"); done
    # nspawn's /sys lacks /sys/module; berth's VMM detects a PVM host by
    # /sys/module/kvm_pvm (and then boots the guest with its quirks).
    [ -d /sys/module ] && args+=(--bind-ro=/sys/module)
    # norbind: the cache holds this very image, below which nspawn has
    # mounted the container's /dev, /proc/sys, ... by now; a recursive bind
    # would show the container's systemd those mounts (and it would try to
    # unmount them at shutdown).
    [ -d "$cache" ] && args+=(--bind-ro="$cache:$cache:norbind")
    if [ -n "${BERTH_INSTALL_DIR:-}" ]; then
        [ -d "$BERTH_INSTALL_DIR/bin" ] || die "BERTH_INSTALL_DIR=$BERTH_INSTALL_DIR has no bin/"
        args+=(--bind-ro="$(realpath "$BERTH_INSTALL_DIR/bin"):/usr/local/bin")
        [ -d "$BERTH_INSTALL_DIR/lib/berth" ] &&
            args+=(--bind-ro="$(realpath "$BERTH_INSTALL_DIR/lib/berth"):/usr/local/lib/berth")
    fi
    args+=("${binds[@]}")
    if [ ${#init[@]} -eq 0 ]; then args+=(-b); else args+=(--kill-signal=SIGRTMIN+3 "${init[@]}"); fi

    # Run nspawn in a cgroup of its own in every hierarchy: with --keep-unit
    # it creates payload/ (the container) and supervisor/ (itself) below its
    # cgroup, which must not collide with other instances' and is removed by
    # stop. setsid: the test host outlives the caller's session.
    local cg
    for cg in $(instance_cgroups "$name"); do make_cgroup "$cg" || die "cannot create cgroup $cg"; done
    instance_cgroups "$name" > "$s/cgroups"
    printf '%q ' systemd-nspawn "${args[@]}" > "$s/cmdline"
    (
        exec 7>&-
        for cg in $(cat "$s/cgroups"); do echo "$BASHPID" > "$cg/cgroup.procs"; done
        exec env "${env[@]}" setsid systemd-nspawn "${args[@]}" < /dev/null > "$s/console.log" 2>&1
    ) &
    local pid=$! i c ns
    echo "$pid $(proc_start "$pid")" > "$s/supervisor"
    ns=$(readlink /proc/self/ns/pid)
    # env and setsid exec in place ($pid becomes systemd-nspawn) unless setsid
    # had to fork. The leader is nspawn's child in another PID namespace.
    leader=
    for i in $(seq 1 200); do
        alive "$pid" || break
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = setsid ] && { c=$(pgrep -P "$pid" -x systemd-nspawn) && pid=$c; }
        for c in $(pgrep -P "$pid"); do
            [ "$(readlink "/proc/$c/ns/pid" 2>/dev/null)" != "$ns" ] && { leader=$c; break 2; }
        done
        sleep 0.05
    done
    if [ -z "$leader" ]; then
        start_failed "$name" "systemd-nspawn did not start a container"
    fi
    echo "$pid $(proc_start "$pid")" > "$s/supervisor"
    echo "$leader $(proc_start "$leader")" > "$s/leader"
    # Wait for the container's systemd: the private socket appears once
    # PID 1 has switched to systemd and set up; then is-system-running,
    # --wait bounded to 2 s per try (a --wait that starts just as the boot
    # finishes was seen to block until killed).
    local timeout=${BERTH_TESTHOST_TIMEOUT:-90} st=
    local deadline=$((SECONDS + timeout))
    while [ $SECONDS -lt $deadline ]; do
        running "$name" || start_failed "$name" "the container exited during boot"
        if [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] &&
            nsenter -t "$leader" -m test -S /run/systemd/private 2>/dev/null; then
            st=$(timeout 2 nsenter -t "$leader" -a \
                /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
                systemctl is-system-running --wait 2>/dev/null) || true
            case $st in running | degraded) break ;; esac
        fi
        sleep 0.1
    done
    case $st in
    running) ;;
    degraded)
        echo "testhost: $name is degraded; failed units:" >&2
        in_container "$name" systemctl --failed --no-legend --plain >&2 || true ;;
    *)
        if running "$name"; then
            st=$(in_container "$name" systemctl is-system-running 2>/dev/null) || true
            echo "testhost: $name: systemd is ${st:-not answering}; jobs:" >&2
            in_container "$name" systemctl list-jobs --no-legend --plain >&2 || true
        fi
        start_failed "$name" "systemd did not reach running/degraded within ${timeout}s" ;;
    esac
    echo "$leader"
}

start_failed() {
    local name=$1 s
    s=$(sdir "$name")
    echo "testhost: start $name: $2; console log:" >&2
    tail -n 40 "$s/console.log" >&2 2>/dev/null || true
    cmd_stop "$name" >/dev/null 2>&1 || true
    exit 1
}

# ---------------------------------------------------------------- exec ----

# in_container NAME CMD...: run CMD in NAME's namespaces and cgroups.
in_container() {
    local name=$1; shift
    running "$name" || die "$name is not running"
    local -a envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
        LANG=C.UTF-8 TERM="${TERM:-dumb}" container=systemd-nspawn) scope=()
    while [ $# -gt 0 ]; do
        case $1 in
        --env)
            [ $# -ge 2 ] && [[ $2 == [A-Za-z_]*=* ]] || usage
            envs+=("$2"); shift 2 ;;
        --scope)
            [ ${#scope[@]} -gt 0 ] || scope=(systemd-run --quiet --scope --collect)
            shift ;;
        --property)
            [ $# -ge 2 ] && [[ $2 == [A-Za-z]*=* ]] || usage
            [ ${#scope[@]} -gt 0 ] || scope=(systemd-run --quiet --scope --collect)
            scope+=(-p "$2"); shift 2 ;;
        --) shift; break ;;
        *) break ;;
        esac
    done
    [ $# -gt 0 ] || usage
    # Join the leader's cgroups (its init.scope in the hierarchies systemd
    # manages there, the container's root in the others) so that the command
    # is inside the container's cgroup namespace roots and systemd can move it
    # (systemd-run --scope); then every namespace of the leader.
    local cg
    for cg in $(cgroup_paths "$leader"); do
        echo "$BASHPID" > "$cg/cgroup.procs" 2>/dev/null ||
            echo "testhost: warning: cannot join cgroup $cg" >&2
    done
    local rc=0
    [ ${#scope[@]} -gt 0 ] && scope+=(--)
    nsenter -t "$leader" -a --wdns=/ /usr/bin/env -i "${envs[@]}" "${scope[@]}" "$@" || rc=$?
    return $rc
}

cmd_exec() {
    local name=$1; shift
    check_name "$name"
    running "$name" || { echo "testhost: $name is not running" >&2; exit 125; }
    local rc=0
    # A subshell, so that only it (and the command) change cgroups.
    (in_container "$name" "$@") || rc=$?
    exit $rc
}

# ---------------------------------------------------------------- stop ----

cmd_stop() {
    local name=$1 s timeout=${BERTH_TESTHOST_STOP_TIMEOUT:-30} i
    check_name "$name"
    s=$(sdir "$name")
    [ -d "$s" ] || return 0
    if running "$name"; then
        kill -TERM "$sup" 2>/dev/null || true
        for i in $(seq 1 $((timeout * 20))); do
            alive "$sup" || break
            sleep 0.05
        done
        if alive "$sup"; then
            echo "testhost: $name did not power off within ${timeout}s; killing it" >&2
            # Killing the container's PID 1 kills its PID namespace; nspawn
            # then exits.
            kill -KILL "$leader" 2>/dev/null || true
            for i in $(seq 1 50); do alive "$sup" || break; sleep 0.1; done
            kill -KILL "$sup" 2>/dev/null || true
        fi
    else
        # A start that failed half-way, or one of the two processes died.
        if [ -f "$s/leader" ]; then
            read -r leader leader_start < "$s/leader"
            [ "$(proc_start "$leader")" = "$leader_start" ] && kill -KILL "$leader" 2>/dev/null || true
        fi
        if [ -f "$s/supervisor" ]; then
            read -r sup sup_start < "$s/supervisor"
            [ "$(proc_start "$sup")" = "$sup_start" ] && kill -KILL "$sup" 2>/dev/null || true
            for i in $(seq 1 50); do alive "$sup" || break; sleep 0.1; done
        fi
    fi
    cleanup_instance "$name"
}

cleanup_instance() {
    local name=$1 s cg ok=0
    s=$(sdir "$name")
    if [ -f "$s/cgroups" ]; then
        for cg in $(cat "$s/cgroups"); do
            # Wait briefly for the last processes to leave.
            local i
            for i in $(seq 1 50); do remove_cgroup_tree "$cg" && break; sleep 0.1; done
            [ -d "$cg" ] && { echo "testhost: cannot remove cgroup $cg (processes left?)" >&2; ok=1; }
        done
    fi
    rm -rf /run/systemd/nspawn/propagate/"$name" 2>/dev/null || true
    if [ -d "$s" ]; then
        # Nothing may be mounted below the state dir from the host's view.
        if awk -v d="$s" 'index($5, d "/") == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
            echo "testhost: mounts left below $s; not removing it" >&2; return 1
        fi
        rm -rf --one-file-system "$s"
    fi
    return $ok
}

# ---------------------------------------------------------------- main ----

[ $# -ge 1 ] || usage
[ "$(id -u)" = 0 ] || die "must run as root"
cmd=$1; shift
case $cmd in
build) [ $# -eq 0 ] || usage; image_build ;;
start) [ $# -ge 1 ] || usage; cmd_start "$@" ;;
exec) [ $# -ge 2 ] || usage; cmd_exec "$@" ;;
stop) [ $# -eq 1 ] || usage; check_name "$1"; lock "$1"; cmd_stop "$1" ;;
pid) [ $# -eq 1 ] || usage; check_name "$1"; running "$1" && echo "$leader" ;;
list)
    [ $# -eq 0 ] || usage
    for d in "$state_root"/*/; do
        [ -d "$d" ] || continue
        n=$(basename "$d")
        running "$n" && echo "$n $leader"
    done
    ;;
-h | --help | help) usage ;;
*) usage ;;
esac
