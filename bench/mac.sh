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
#   bench/mac.sh [RUNS]        (default 50 runs per case, after 5 warm-ups)
#
# Uses the installed berth (make setup), or BERTH=path/to/berth. Needs root
# and a kernel with Landlock (it says which ABI).
set -euo pipefail
runs=${1:-50}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$(command -v berth || echo "$here/target/release/berth")}
[ -x "$berth" ] || { echo "bench: berth not found (run make setup)" >&2; exit 1; }
for t in hyperfine jq; do command -v $t >/dev/null || { echo "bench: $t missing (run make setup)" >&2; exit 1; }; done
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

echo "bench/mac.sh: $runs runs each; $(nproc) CPUs; kernel $(uname -r), Landlock ABI $abi; $(date -u +%F); load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A median mean sd
for i in "${!names[@]}"; do
    n=${names[$i]}; c=${cmds[$i]}; j="$work/$i.json"
    hyperfine -w 5 -r "$runs" -N --export-json "$j" "$c" >/dev/null 2>&1 \
        || hyperfine -w 5 -r "$runs" --export-json "$j" "$c" >/dev/null
    median[$n]=$(jq '.results[0].median*1000' "$j")
    mean[$n]=$(jq '.results[0].mean*1000' "$j")
    sd[$n]=$(jq '.results[0].stddev*1000' "$j")
done

printf '\n| %-18s | %9s | %15s | %16s |\n' "case" "median ms" "mean ± sd ms" "landlock - off"
printf '|-%-18s-|-%9s-|-%15s-|-%16s-|\n' "------------------" "---------" "---------------" "----------------"
for n in "${names[@]}"; do
    case $n in
        *"landlock=off") d="" ;;
        *) off="${n%, landlock}, landlock=off"
           d=$(echo "${median[$n]} ${median[$off]}" | awk '{ printf "%+.2f ms (%+.1f%%)", $1-$2, ($1-$2)*100/$2 }') ;;
    esac
    printf '| %-18s | %9.1f | %6.1f ± %6.1f | %16s |\n' "$n" "${median[$n]}" "${mean[$n]}" "${sd[$n]}" "$d"
done
