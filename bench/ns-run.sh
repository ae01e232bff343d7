#!/usr/bin/env bash
# Start-up benchmark of the namespace stage1: median wall time of
#   berth run --rm --stage1=ns --rootfs <busybox> -- /bin/true
# with the default network (--net private: an address on a bridge with NAT;
# here a bridge, subnet and nft table of the benchmark's own, set up by the
# first warm-up run and removed at the end with `berth network rm`), and
# with --net none (a network namespace with loopback only, like runc's
# default config), against `runc run` and `crun run` of the same rootfs
# (Debian's packages, a generated config.json), `systemd-nspawn -D <rootfs>
# /bin/true`, and the floor of any namespace runtime:
#   unshare -mnpuif --mount-proc chroot <rootfs> /bin/true
# in one run, printed as a table with ratios. Then a breakdown of the berth
# default path (where its milliseconds go), from the step timings that
# `berth --log-level debug` prints (berth-net and stage1-ns), medians of
# BREAKDOWN_RUNS runs (default 20).
#
#   bench/ns-run.sh [RUNS]        (default 50 runs per tool, after 5 warm-ups)
#
# Uses the installed berth (make setup), or BERTH=path/to/berth. Needs root.
# A reference that cannot run on this host (crun on a hybrid cgroup layout,
# nspawn without a system bus) is reported with its error instead of a time.
set -euo pipefail
runs=${1:-50}
bruns=${BREAKDOWN_RUNS:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$(command -v berth || echo "$here/target/release/berth")}
[ -x "$berth" ] || { echo "bench: berth not found (run make setup)" >&2; exit 1; }
for t in hyperfine jq runc unshare; do command -v $t >/dev/null || { echo "bench: $t missing (run make setup)" >&2; exit 1; }; done
img=$(bash "$here/images/busybox.sh")
work=$(mktemp -d /tmp/berth-bench-XXXXXX)
cleanup() {
    "$berth" --root "$work/root" network rm --force >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# An OCI bundle over the same image: read-only root (berth's overlay never
# writes to the image either), no terminal, /bin/true.
mkdir -p "$work/bundle"
(cd "$work/bundle" && runc spec)
jq --arg r "$img" '.root.path=$r | .root.readonly=true | .process.terminal=false | .process.args=["/bin/true"]' \
    "$work/bundle/config.json" > "$work/bundle/c" && mv "$work/bundle/c" "$work/bundle/config.json"

mkdir -p "$work/root"
printf '[network]\nbridge = "bnsbench0"\nsubnet = "198.18.252.0/24"\nnft_table = "berth_nsbench"\ndns = []\n' \
    > "$work/root/berth.toml"
declare -a names cmds
add() { names+=("$1"); cmds+=("$2"); }
add berth "$berth --root $work/root run --rm --stage1=ns --rootfs $img -- /bin/true"
add "berth --net none" "$berth --root $work/root run --rm --stage1=ns --net none --rootfs $img -- /bin/true"
add runc "runc --root $work/runc run -b $work/bundle bench-runc-\$\$-\$RANDOM"
add crun "crun --root $work/crun run -b $work/bundle bench-crun-\$\$-\$RANDOM"
# nspawn: no machined registration and no scope unit, as there is no system
# bus on these machines; -q to keep its notices out of the timing.
add systemd-nspawn "systemd-nspawn -q --register=no --keep-unit -D $img /bin/true"
add "unshare floor" "unshare -mnpuif --mount-proc chroot $img /bin/true"

echo "bench/ns-run.sh: $runs runs each; $(nproc) CPUs; kernel $(uname -r); $(date -u +%F); load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A median mean sd err
for i in "${!names[@]}"; do
    n=${names[$i]}; c=${cmds[$i]}; j="$work/$i.json"
    if ! out=$(bash -c "$c" 2>&1); then
        err[$n]=$(echo "$out" | grep -v '^$' | tail -1)
        continue
    fi
    hyperfine -w 5 -r "$runs" -N --export-json "$j" "$c" >/dev/null 2>&1 \
        || hyperfine -w 5 -r "$runs" --export-json "$j" "$c" >/dev/null
    median[$n]=$(jq '.results[0].median*1000' "$j")
    mean[$n]=$(jq '.results[0].mean*1000' "$j")
    sd[$n]=$(jq '.results[0].stddev*1000' "$j")
done

ratio() { echo "${1:-0} ${2:-0}" | awk '{ if ($1 > 0 && $2 > 0) printf "%.2fx", $1/$2; else print "-" }'; }
printf '\n| %-16s | %9s | %15s | %12s | %17s |\n' "runtime" "median ms" "mean ± sd ms" "berth / this" "--net none / this"
printf '|-%-16s-|-%9s-|-%15s-|-%12s-|-%17s-|\n' "----------------" "---------" "---------------" "------------" "-----------------"
for n in "${names[@]}"; do
    if [ -n "${err[$n]:-}" ]; then
        printf '| %-16s | %9s | %15s | %12s | %17s |\n' "$n" "-" "-" "fails here" ""
        continue
    fi
    printf '| %-16s | %9.1f | %6.1f ± %6.1f | %12s | %17s |\n' "$n" "${median[$n]}" "${mean[$n]}" "${sd[$n]}" \
        "$(ratio "${median[berth]:-}" "${median[$n]}")" "$(ratio "${median[berth --net none]:-}" "${median[$n]}")"
done
for n in "${names[@]}"; do
    [ -n "${err[$n]:-}" ] && echo "  $n: ${err[$n]}"
done
echo
echo "targets: berth/runc <= 0.50x; berth/crun <= 1.00x wherever crun runs"

# --- Breakdown of the default path ---------------------------------------
# Each run's debug log gives: berth-net's steps ("net: OP: STEP X ms (total
# Y ms)": prepare in stage0, attach_veth and release in stage1, release
# again in stage0) and stage1-ns's cumulative steps ("stage1-ns: STEP after
# DURATION"). "stage0 + exec, rest" is the wall time minus prepare and
# stage1's own time: process start-up of berth and stage1, pod.json, the
# final release check, exits.
for r in $(seq "$bruns"); do
    s=$(date +%s%N)
    "$berth" --root "$work/root" --log-level debug run --rm --stage1=ns --rootfs "$img" -- /bin/true \
        2> "$work/dbg.$r" >/dev/null
    e=$(date +%s%N)
    echo "WALL $(( (e - s) / 1000 ))" >> "$work/dbg.$r"
done
for r in $(seq "$bruns"); do
    awk '
    function ms(d,   v) {   # a Rust Duration debug string
        v = d + 0
        if (d ~ /ns$/) return v / 1e6
        if (d ~ /µs$/) return v / 1e3
        if (d ~ /ms$/) return v
        if (d ~ /s$/) return v * 1e3
        return v
    }
    /\] net: [a-z_]+: .* ms \(total / {
        line = $0; sub(/.*\] net: /, "", line)
        split(line, a, ": "); op = a[1]; rest = a[2]
        step = rest; sub(/ [0-9.]+ ms \(total.*/, "", step)
        n = split(rest, w, " "); val = w[n - 4]
        if (op == "release" && seen_release) op = "release (stage0, again)"
        if (op == "release" && step == "lease removed") seen_release = 1
        if (op == "release" && step == "nothing left to release") seen_release = 1
        if (op == "prepare") prepare += val
        printf "net %s: %s\t%s\n", op, step, val
    }
    /stage1-ns: .* after / {
        line = $0; sub(/.*stage1-ns: /, "", line)
        step = line; sub(/ after .*/, "", step)
        d = line; sub(/.* after /, "", d)
        t = ms(d); printf "stage1 %s\t%.3f\n", step, t - last; last = t
    }
    /^WALL / { wall = $2 / 1000 }
    END {
        printf "wall\t%.3f\n", wall
        printf "stage0 + exec, rest\t%.3f\n", wall - prepare - last
    }' "$work/dbg.$r"
done > "$work/steps"
echo
echo "Breakdown of the berth default path (medians of $bruns runs with --log-level debug, ms;"
echo "stage1 steps run one after another, net: lines are parts of the step they sit in):"
echo
printf '| %-52s | %9s |\n' "step" "median ms"
printf '|-%-52s-|-%9s-|\n' "----------------------------------------------------" "---------"
cut -f1 "$work/steps" | awk '!seen[$0]++' | while IFS= read -r k; do
    m=$(awk -F'\t' -v k="$k" '$1 == k { print $2 }' "$work/steps" | sort -n \
        | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    printf '| %-52s | %9.2f |\n' "$k" "$m"
done
