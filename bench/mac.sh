#!/usr/bin/env bash
# What Landlock costs on the namespace stage1: median wall time of
#   berth run --rm --stage1=ns --net none --rootfs <busybox> -- /bin/true
#   berth exec POD -- /bin/true            (a running busybox pod)
# with Landlock (the default) against the same with
# `--security-opt landlock=off`, in one run, printed as a table with the
# difference. Landlock itself is a few syscalls per process
# (landlock_create_ruleset, an O_PATH open and landlock_add_rule per rule,
# landlock_restrict_self) plus a path walk check on each open in the pod.
#
#   bench/mac.sh [ROUNDS]      (default 50 interleaved rounds, after a warm-up)
#
# Then the steady cost on each open(2) in a pod (Landlock checks the path
# walk against the rules): bench/data/openloop.c opening a file five
# directories deep 200000 times, in a pod with and without Landlock,
# ns per open+close, median of OPEN_ROUNDS (default 7) interleaved runs.
#
# Uses the installed berth (make setup), or BERTH=path/to/berth. Needs root
# and a kernel with Landlock (it says which ABI).
set -euo pipefail
runs=${1:-50}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$(command -v berth || echo "$here/target/release/berth")}
[ -x "$berth" ] || { echo "bench: berth not found (run make setup)" >&2; exit 1; }
for t in jq; do command -v $t >/dev/null || { echo "bench: $t missing (run make setup)" >&2; exit 1; }; done
img=$(bash "$here/images/busybox.sh")
work=$(mktemp -d /tmp/berth-bench-mac-XXXXXX)
cleanup() {
    "$berth" --root "$work/root" rm -f mac-on mac-off >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/root"
b="$berth --root $work/root"

# A pod of each kind for exec.
$b run -d --name mac-on --net none --rootfs "$img" -- sleep 100000 >/dev/null
$b run -d --name mac-off --net none --security-opt landlock=off --rootfs "$img" -- sleep 100000 >/dev/null
abi=$($b inspect --format json mac-on | jq -r '.landlock.abi // .landlock.state')

declare -a names cmds
add() { names+=("$1"); cmds+=("$2"); }
add "run, landlock" "$b run --rm --stage1=ns --net none --rootfs $img -- /bin/true"
add "run, landlock=off" "$b run --rm --stage1=ns --net none --security-opt landlock=off --rootfs $img -- /bin/true"
add "exec, landlock" "$b exec mac-on -- /bin/true"
add "exec, landlock=off" "$b exec mac-off -- /bin/true"

echo "bench/mac.sh: $runs rounds; $(nproc) CPUs; kernel $(uname -r), Landlock ABI $abi; $(date -u +%F); load $(cut -d' ' -f1-3 /proc/loadavg)"
# Interleaved rounds (each round runs every case once, in turn), so that a
# change of load on a shared machine hits both sides of a pair alike; the
# cost is the median of the paired differences (landlock - off), with the
# medians of each case beside it.
us() { local s e; s=$(date +%s%N); bash -c "$1" >/dev/null 2>&1 || { echo "bench: failed: $1" >&2; exit 1; }; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
for i in "${!names[@]}"; do bash -c "${cmds[$i]}" >/dev/null 2>&1 || true; done # warm-up
declare -A t
for ((r = 0; r < runs; r++)); do
    for i in "${!names[@]}"; do t[$i]+="$(us "${cmds[$i]}") "; done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2] / 1000; else print (a[NR / 2] + a[NR / 2 + 1]) / 2000 }'; }
pairdiff() { paste -d' ' <(echo "$1" | tr ' ' '\n') <(echo "$2" | tr ' ' '\n') | awk 'NF == 2 { print $1 - $2 }' | tr '\n' ' '; }
printf '\n| %-18s | %9s | %25s |\n' "case" "median ms" "landlock - off, median ms"
printf '|-%-18s-|-%9s-|-%25s-|\n' "------------------" "---------" "-------------------------"
for i in "${!names[@]}"; do
    n=${names[$i]}
    m=$(echo "${t[$i]}" | median)
    d=""
    if [ $((i % 2)) -eq 0 ]; then
        d=$(pairdiff "${t[$i]}" "${t[$((i + 1))]}" | median)
        d=$(awk -v d="$d" -v off="$(echo "${t[$((i + 1))]}" | median)" 'BEGIN { printf "%+.2f (%+.1f%%)", d, d * 100 / off }')
    fi
    printf '| %-18s | %9.2f | %25s |\n' "$n" "$m" "$d"
done

# The steady cost per open(2).
orounds=${OPEN_ROUNDS:-7}
command -v cc >/dev/null || { echo "bench: cc missing (apt-get install gcc)" >&2; exit 1; }
mkdir -p "$work/tools"
cc -static -O2 -o "$work/tools/openloop" "$here/bench/data/openloop.c"
deep=/a/b/c/d/e/f
o_on=""; o_off=""
for ((r = 0; r < orounds; r++)); do
    for ll in on off; do
        v=$($b run --rm --net none --security-opt landlock=$ll -v "$work/tools:/t:ro" --rootfs "$img" -- \
            sh -c "mkdir -p $(dirname $deep) && echo x > $deep && /t/openloop $deep 200000")
        if [ $ll = on ]; then o_on+="$v "; else o_off+="$v "; fi
    done
done
mon=$(echo "$o_on" | tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
moff=$(echo "$o_off" | tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
printf '\n| %-36s | %12s |\n' "open+close of $deep in a pod" "median ns" 
printf '|-%-36s-|-%12s-|\n' "------------------------------------" "------------"
printf '| %-36s | %12s |\n' "landlock" "$mon" "landlock=off" "$moff"
awk -v a="$mon" -v b="$moff" 'BEGIN { printf "| %-36s | %12s |\n", "landlock - off", sprintf("%+.1f (%+.1f%%)", a - b, (a - b) * 100 / b) }'
