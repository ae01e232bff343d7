#!/usr/bin/env bash
# I/O over virtio-fs and exec latency, in one run, as a table:
#  - sequential read of a 256 MiB file (dd bs=1M) and a metadata walk
#    (`find` over a few thousand files), on the host, inside an ns pod and
#    inside a kvm pod (both through a read-only volume: a bind mount for ns,
#    a virtio-fs share for kvm), with the ratios to the host;
#  - `berth exec NAME -- /bin/true` latency for ns and kvm (median).
# Pod-side times are measured from the host as `berth exec NAME -- CMD`
# minus the median `exec -- /bin/true` of the same pod, so the exec cost is
# not counted twice. On the PVM CI hosts every guest syscall is emulated
# guest-kernel work (milliseconds), so the host's syscall count for each
# workload (strace -c -f) is printed next to it: it explains the kvm column.
#
#   bench/kvm-io.sh [EXEC_RUNS]     (default 5)
set -euo pipefail
runs=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$(command -v berth || echo "$here/target/release/berth")}
img=$(bash "$here/images/busybox.sh")
work=$(mktemp -d /tmp/berth-kvmio-XXXXXX)
root="$work/root"
cleanup() {
    for p in io-ns io-kvm; do "$berth" --root "$root" rm -f "$p" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "bench/kvm-io.sh: $(nproc) CPUs; kernel $(uname -r); $(date -u +%F)"
[ -e /sys/module/kvm_pvm ] && echo "host KVM: PVM (nested, guest kernel emulated)"

data="$work/data"
mkdir -p "$data/tree"
echo "preparing 256 MiB file and a 3000-file tree..." >&2
dd if=/dev/urandom of="$data/big" bs=1M count=256 status=none
for d in $(seq 1 30); do
    mkdir "$data/tree/d$d"
    for f in $(seq 1 100); do echo "$d $f" > "$data/tree/d$d/f$f"; done
done

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# time_ms CMD...: wall time of one run, in ms.
time_ms() {
    local s e
    s=$(now_ms); "$@" >/dev/null 2>&1; e=$(now_ms)
    echo $(( e - s ))
}

read_cmd=(dd if=/data/big of=/dev/null bs=1M)
find_cmd=(find /data/tree)

# Host: the same commands on the same files (page cache warm, like the pods).
cat "$data/big" > /dev/null
host_read=$(time_ms dd if="$data/big" of=/dev/null bs=1M)
host_find=$(time_ms find "$data/tree")
sys_read=$(strace -c -f -o "$work/st" dd if="$data/big" of=/dev/null bs=1M 2>/dev/null; awk '/total/ { print $4 }' "$work/st")
sys_find=$(strace -c -f -o "$work/st" find "$data/tree" >/dev/null 2>&1; awk '/total/ { print $4 }' "$work/st")
sys_true=$(strace -c -f -o "$work/st" /bin/true; awk '/total/ { print $4 }' "$work/st")

declare -A exec_ms read_ms find_ms
for s in ns kvm; do
    echo "starting the $s pod..." >&2
    "$berth" --root "$root" run -d --name "io-$s" --stage1="$s" --net none \
        -v "$data:/data:ro" --rootfs "$img" -- sleep 100000 >/dev/null
    "$berth" --root "$root" exec "io-$s" -- /bin/true   # warm-up
    t=()
    for _ in $(seq 1 "$runs"); do t+=("$(time_ms "$berth" --root "$root" exec "io-$s" -- /bin/true)"); done
    exec_ms[$s]=$(printf '%s\n' "${t[@]}" | median)
    r=$(time_ms "$berth" --root "$root" exec "io-$s" -- "${read_cmd[@]}")
    f=$(time_ms "$berth" --root "$root" exec "io-$s" -- "${find_cmd[@]}")
    read_ms[$s]=$(( r > exec_ms[$s] ? r - exec_ms[$s] : 0 ))
    find_ms[$s]=$(( f > exec_ms[$s] ? f - exec_ms[$s] : 0 ))
    echo "  $s: exec $((exec_ms[$s])) ms, read $((read_ms[$s])) ms, find $((find_ms[$s])) ms" >&2
    "$berth" --root "$root" rm -f "io-$s" >/dev/null
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) b = 1; printf "%.1fx", a / b }'; }
echo
printf '%-30s %10s %10s %10s %9s %9s %12s\n' workload host_ms ns_ms kvm_ms ns/host kvm/host host_syscalls
printf '%-30s %10s %10s %10s %9s %9s %12s\n' "read 256 MiB (dd bs=1M)" "$host_read" "${read_ms[ns]}" "${read_ms[kvm]}" \
    "$(ratio "${read_ms[ns]}" "$host_read")" "$(ratio "${read_ms[kvm]}" "$host_read")" "$sys_read"
printf '%-30s %10s %10s %10s %9s %9s %12s\n' "find over 3000 files" "$host_find" "${find_ms[ns]}" "${find_ms[kvm]}" \
    "$(ratio "${find_ms[ns]}" "$host_find")" "$(ratio "${find_ms[kvm]}" "$host_find")" "$sys_find"
printf '%-30s %10s %10s %10s %9s %9s %12s\n' "exec -- /bin/true (median)" "-" "${exec_ms[ns]}" "${exec_ms[kvm]}" \
    "-" "-" "$sys_true"
echo
echo "kvm ms per host syscall: read $(awk -v a="${read_ms[kvm]}" -v n="$sys_read" 'BEGIN { printf "%.2f", a / n }'), find $(awk -v a="${find_ms[kvm]}" -v n="$sys_find" 'BEGIN { printf "%.2f", a / n }')"
