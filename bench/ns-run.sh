#!/usr/bin/env bash
# Start-up benchmark of the namespace stage1: median wall time of
#   berth run --rm --stage1=ns --net none --rootfs <busybox> -- /bin/true
# (--net none: like runc's default config, a network namespace with
# loopback only; the row berth-private shows the default --net private, on a
# bridge and subnet of the benchmark's own),
# against `runc run` and `crun run` of the same rootfs (Debian's packages, a
# generated config.json) and `systemd-nspawn -D <rootfs> /bin/true`, in one
# run, printed as a table with ratios to berth.
#
#   bench/ns-run.sh [RUNS]        (default 50 runs per tool, after 5 warm-ups)
#
# Uses the installed berth (make setup), or BERTH=path/to/berth. Needs root.
# A reference that cannot run on this host (crun on a hybrid cgroup layout,
# nspawn without a system bus) is reported with its error instead of a time.
set -euo pipefail
runs=${1:-50}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$(command -v berth || echo "$here/target/release/berth")}
[ -x "$berth" ] || { echo "bench: berth not found (run make setup)" >&2; exit 1; }
for t in hyperfine jq runc; do command -v $t >/dev/null || { echo "bench: $t missing (run make setup)" >&2; exit 1; }; done
img=$(bash "$here/images/busybox.sh")
work=$(mktemp -d /tmp/berth-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT

# An OCI bundle over the same image: read-only root (berth's overlay never
# writes to the image either), no terminal, /bin/true.
mkdir -p "$work/bundle"
(cd "$work/bundle" && runc spec)
jq --arg r "$img" '.root.path=$r | .root.readonly=true | .process.terminal=false | .process.args=["/bin/true"]' \
    "$work/bundle/config.json" > "$work/bundle/c" && mv "$work/bundle/c" "$work/bundle/config.json"

declare -a names cmds
add() { names+=("$1"); cmds+=("$2"); }
add berth "$berth --root $work/root run --rm --stage1=ns --net none --rootfs $img -- /bin/true"
mkdir -p "$work/root"
printf '[network]\nbridge = "bnsbench0"\nsubnet = "198.18.252.0/24"\nnft_table = "berth_nsbench"\ndns = []\n' \
    > "$work/root/berth.toml"
add berth-private "$berth --root $work/root run --rm --stage1=ns --rootfs $img -- /bin/true"
add runc "runc --root $work/runc run -b $work/bundle bench-runc-\$\$-\$RANDOM"
add crun "crun --root $work/crun run -b $work/bundle bench-crun-\$\$-\$RANDOM"
# nspawn: no machined registration and no scope unit, as there is no system
# bus on these machines; -q to keep its notices out of the timing.
add systemd-nspawn "systemd-nspawn -q --register=no --keep-unit -D $img /bin/true"

echo "bench/ns-run.sh: $runs runs each; $(nproc) CPUs; kernel $(uname -r); $(date -u +%F)"
declare -A median mean sd err
for i in "${!names[@]}"; do
    n=${names[$i]}; c=${cmds[$i]}
    if ! out=$(bash -c "$c" 2>&1); then
        err[$n]=$(echo "$out" | grep -v '^$' | tail -1)
        continue
    fi
    hyperfine -w 5 -r "$runs" -N --export-json "$work/$n.json" "$c" >/dev/null 2>&1 \
        || hyperfine -w 5 -r "$runs" --export-json "$work/$n.json" "$c" >/dev/null
    median[$n]=$(jq '.results[0].median*1000' "$work/$n.json")
    mean[$n]=$(jq '.results[0].mean*1000' "$work/$n.json")
    sd[$n]=$(jq '.results[0].stddev*1000' "$work/$n.json")
done

printf '\n| %-15s | %10s | %16s | %15s |\n' "runtime" "median ms" "mean ± sd ms" "berth / this"
printf '|-%-15s-|-%10s-|-%16s-|-%15s-|\n' "---------------" "----------" "----------------" "---------------"
for n in "${names[@]}"; do
    if [ -n "${err[$n]:-}" ]; then
        printf '| %-15s | %10s | %16s | %15s |\n' "$n" "-" "-" "fails here"
        continue
    fi
    ratio=$(echo "${median[berth]:-0} ${median[$n]}" | awk '{ if ($2 > 0) printf "%.2fx", $1/$2; else print "-" }')
    printf '| %-15s | %10.1f | %7.1f ± %6.1f | %15s |\n' "$n" "${median[$n]}" "${mean[$n]}" "${sd[$n]}" "$ratio"
done
for n in "${names[@]}"; do
    [ -n "${err[$n]:-}" ] && echo "  $n: ${err[$n]}"
done
echo
echo "targets: berth/runc <= 0.50x; berth/crun <= 1.00x wherever crun runs"
