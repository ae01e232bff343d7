#!/usr/bin/env bash
# Self-test of tests/testhost/testhost.sh: builds the image, starts a test
# host, checks what berth's host-integration tests rely on inside it, and
# that start/stop are idempotent and leave nothing behind. With
# BERTH_INSTALL_DIR set (bin/ and lib/berth/, e.g. a `make install
# PREFIX=...` tree) it also runs `berth run` inside (ns stage1; kvm too with
# SELFTEST_KVM=1, slow on PVM).
#
#   tests/testhost/selftest.sh        prints one line per check; exit 1 on a failure
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
th() { bash "$here/testhost.sh" "$@"; }
name=selftest-$$
fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1${2:+: $2}"; fails=$((fails + 1)); }
check() { # DESCRIPTION EXPECTED CMD...: CMD's trimmed stdout must equal EXPECTED
    local d=$1 want=$2 got; shift 2
    got=$("$@" 2>&1 | tr -s '\n' ' ' | sed 's/ $//')
    [ "$got" = "$want" ] && ok "$d" || bad "$d" "expected '$want', got '$got'"
}
trap 'th stop "$name" >/dev/null 2>&1' EXIT

img=$(th build | tail -n 1) && [ -x "$img/usr/bin/machinectl" ] && ok "build: $img" || { bad build; exit 1; }
t=$SECONDS
leader=$(th start "$name" | tail -n 1)
[[ $leader =~ ^[0-9]+$ ]] && ok "start: leader $leader ($((SECONDS - t)) s)" || { bad start "$leader"; exit 1; }
check "start again returns the same leader" "$leader" th start "$name"
check "pid" "$leader" th pid "$name"
check "list" "$name $leader" sh -c "bash '$here/testhost.sh' list | grep '^$name '"

check "systemd is running" running th exec "$name" -- systemctl is-system-running
check "PID 1 is systemd" systemd th exec "$name" -- cat /proc/1/comm
check "busctl reaches the system bus" yes th exec "$name" -- sh -c 'busctl --no-legend list | grep -q org.freedesktop.systemd1 && echo yes'
check "machinectl list works (machined bus-activated)" active th exec "$name" -- sh -c 'machinectl list >/dev/null && systemctl is-active systemd-machined'
check "journalctl reads the journal" yes th exec "$name" -- sh -c 'journalctl -b --no-pager | grep -q "Startup finished" && echo yes'
check "exit code passes through" 7 sh -c "bash '$here/testhost.sh' exec '$name' -- sh -c 'exit 7'; echo \$?"
check "--env" "v" th exec "$name" --env K=v -- sh -c 'echo $K'
check "--property: a delegated scope" "yes" th exec "$name" --property Delegate=yes -- sh -c 'systemctl show -p Delegate --value "$(sed -n "s|^0::/system.slice/||p" /proc/self/cgroup)"'
check "private network: only lo" "lo" th exec "$name" -- sh -c "ip -o link | awk -F': ' '{print \$2}'"
for dev in /dev/kvm /dev/net/tun; do
    [ -c "$dev" ] && check "$dev bound in" yes th exec "$name" -- sh -c "test -c $dev && echo yes"
done
[ -d /sys/module/kvm_pvm ] && check "/sys/module visible (PVM detection)" yes th exec "$name" -- sh -c 'test -d /sys/module/kvm_pvm && echo yes'
check "image stays clean (overlay)" "no" sh -c "bash '$here/testhost.sh' exec '$name' -- touch /selftest-mark; test -e '$img/selftest-mark' && echo yes || echo no"
if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] && [ "${BERTH_TESTHOST_CGROUP:-hybrid-rw}" = hybrid-rw ]; then
    check "hybrid-rw: MemoryMax applied to a scope (v1 memory)" 67108864 th exec "$name" --property MemoryMax=64M -- \
        sh -c 'cat /sys/fs/cgroup/memory$(sed -n "s/^[0-9]*:memory://p" /proc/self/cgroup)/memory.limit_in_bytes'
    check "hybrid-rw: a delegated subtree takes a child with a pids limit" 5 th exec "$name" --property Delegate=yes -- \
        sh -c 'd=/sys/fs/cgroup/pids$(sed -n "s/^[0-9]*:pids://p" /proc/self/cgroup)/child; mkdir $d && echo 5 > $d/pids.max && cat $d/pids.max; rmdir $d'
fi
if [ -n "${BERTH_INSTALL_DIR:-}" ]; then
    bb=$(bash "$repo/images/busybox.sh" | tail -n 1)
    check "berth run (ns) inside" hello th exec "$name" -- berth run --rm --net none --rootfs "$bb" -- echo hello
    check "berth run (ns, --net private) inside" up th exec "$name" -- berth run --rm --rootfs "$bb" -- sh -c 'ip link show eth0 | grep -q UP && echo up'
    if [ "${SELFTEST_KVM:-0}" = 1 ]; then
        check "berth run (kvm) inside" hello th exec "$name" -- berth run --rm --stage1=kvm --net none --rootfs "$bb" -- echo hello
    fi
fi

t=$SECONDS
th stop "$name" && ok "stop ($((SECONDS - t)) s)" || bad stop
check "stop again succeeds" 0 sh -c "bash '$here/testhost.sh' stop '$name'; echo \$?"
check "no state left" no sh -c "test -e '${BERTH_TESTHOST_STATE:-/run/berth-testhost}/$name' && echo yes || echo no"
check "no cgroups left" "" sh -c "find /sys/fs/cgroup -maxdepth 4 -name 'berth-testhost-$name' 2>/dev/null"
check "exec on a stopped host: 125" 125 sh -c "bash '$here/testhost.sh' exec '$name' -- true 2>/dev/null; echo \$?"
trap - EXIT
echo "$fails failed"
[ "$fails" = 0 ]
