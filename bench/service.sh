#!/usr/bin/env bash
# Service pods: `berth start` of a pod made by
#   berth create -u nginx.service --rootfs <Debian image> --stage1 ns|kvm
# until every unit is active (start returns exactly then: its report comes
# after systemd's READY=1 and a `systemctl show` of the units), for the ns
# and kvm stage1s, against `systemd-nspawn -b` of the same image reaching
# nginx.service active (bench/nspawn-service.sh, run here with the same
# count), in one run.
#
#   bench/service.sh [--trace] [RUNS] [KVM_RUNS]   (defaults 3 and 1)
#
# Per run and stage1:
#   start -> units active   wall time of `berth start` (returns 0 only then)
#   curl                    nginx answers through -p HOST:80 (checked)
#   memory                  ns: PSS of every process in the pod's PID
#                           namespace (systemd, journald, nginx) plus
#                           stage1-ns (the supervisor); kvm: RSS of the VMM
#                           process (guest RAM it touched + its own) plus
#                           stage1-kvm
#   stop                    `berth stop` (systemd halts: SIGRTMIN+3)
# kvm runs use BERTH_KERNEL / BERTH_GUEST_INIT when set (else the installed
# ones). --trace adds one more kvm boot with guest-init's trace marks
# (berth_trace=1: systemd's start, READY=1, check, report on the guest's
# clock), the guest kernel's messages and the VMM's FUSE request counts by
# opcode (BERTH_VMM_FUSE_STATS), printed after the table: where the kvm time
# goes. Needs root, the berth build of this tree (target/debug), curl, and
# for the reference systemd-nspawn.
set -euo pipefail

trace=0
if [ "${1:-}" = "--trace" ]; then trace=1; shift; fi
runs=${1:-3}
kvm_runs=${2:-1}
for n in "$runs" "$kvm_runs"; do
    case $n in '' | *[!0-9]*) echo "usage: bench/service.sh [--trace] [RUNS] [KVM_RUNS]" >&2; exit 2 ;; esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH_BIN:-$here/target/debug/berth}
[ -x "$berth" ] || { echo "bench: $berth missing (cargo build --bins)" >&2; exit 1; }
img=${BERTH_BENCH_IMAGE:-$(bash "$here/images/debian.sh" | tail -n 1)}
root=$(mktemp -d /tmp/berth-service-bench-XXXXXX)
# A network of its own (RFC 2544 benchmarking range), as the e2e tests do.
slot=$(( $$ % 200 ))
printf '[network]\nbridge = "bsb%s"\nsubnet = "198.19.%s.0/24"\nnft_table = "berth_sbench_%s"\n' \
    "$slot" "$slot" "$$" > "$root/berth.toml"
cleanup() {
    for p in "$root"/pods/*; do [ -d "$p" ] && "$berth" --root "$root" rm -f "$(basename "$p")" >/dev/null 2>&1 || true; done
    "$berth" --root "$root" gc >/dev/null 2>&1 || true
    [ -n "${BERTH_BENCH_KEEP:-}" ] && echo "bench: kept $root" >&2 || rm -rf "$root"
}
trap cleanup EXIT

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }
kib_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
pss_of() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
rss_of() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stats() { # min median max of the arguments
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%10s | %10s | %10s", v[1], m, v[NR] }'
}

# memory STAGE1 NAME: sets mem (KiB) and mem_what.
memory() {
    local s1=$1 name=$2 leader p v ns
    leader=$(cat "$root/pods/$name/pid")
    mem=0
    if [ "$s1" = ns ]; then
        # pid is stage1-ns; the pod's PID 1 (systemd) is its child.
        local init
        init=$(pgrep -P "$leader" | head -n 1)
        ns=$(readlink "/proc/$init/ns/pid")
        local n=0
        for p in /proc/[0-9]*; do
            [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] || continue
            v=$(pss_of "${p#/proc/}"); mem=$((mem + ${v:-0})); n=$((n + 1))
        done
        v=$(pss_of "$leader"); mem=$((mem + v))
        mem_what="PSS of $n pod processes + stage1-ns"
    else
        # pid is stage1-kvm; the VMM process is its child.
        local vmm
        vmm=$(pgrep -P "$leader" | head -n 1)
        mem=$(( $(rss_of "$vmm") + $(pss_of "$leader") ))
        mem_what="VMM RSS + stage1-kvm PSS"
    fi
}

# one STAGE1 RUN: create, start (timed), check, measure, stop (timed), rm.
one() {
    local s1=$1 r=$2 name="svc-$1-$2" port t0 t1 t2 t3 out
    port=$(free_port)
    "$berth" --root "$root" create --stage1 "$s1" --rootfs "$img" -u nginx.service \
        -p "$port:80" "$name" > /dev/null
    t0=$(now_us)
    if ! out=$("$berth" --root "$root" start "$name" 2>&1); then
        echo "bench: $s1 start failed: $out" >&2
        tail -n 30 "$root/pods/$name/app.log" >&2 || true
        exit 1
    fi
    t1=$(now_us)
    curl -fsS --max-time 10 -o /dev/null "http://127.0.0.1:$port/" \
        || { echo "bench: $s1: nginx does not answer on 127.0.0.1:$port" >&2; exit 1; }
    sleep 1
    memory "$s1" "$name"
    t2=$(now_us)
    "$berth" --root "$root" stop --timeout 600 "$name"
    t3=$(now_us)
    st=$(cat "$root/pods/$name/status")
    "$berth" --root "$root" rm "$name"
    start_ms=$(ms "$t0" "$t1") stop_ms=$(ms "$t2" "$t3") mem_mib=$(kib_mib "$mem")
    echo "$s1 run $r: units active after $start_ms ms, $mem_what $mem_mib MiB, stop $stop_ms ms (status $st)" >&2
}

echo "bench/service.sh: $runs ns / $kvm_runs kvm runs (+ $runs nspawn); image $img; $(nproc) CPUs; kernel $(uname -r); kvm: ${BERTH_KERNEL:-installed kernel}, ${BERTH_GUEST_INIT:-installed guest-init}; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F)"
declare -a ns_start ns_mem ns_stop kvm_start kvm_mem kvm_stop
for r in $(seq 1 "$runs"); do
    one ns "$r"; ns_start+=("$start_ms"); ns_mem+=("$mem_mib"); ns_stop+=("$stop_ms")
done
for r in $(seq 1 "$kvm_runs"); do
    one kvm "$r"; kvm_start+=("$start_ms"); kvm_mem+=("$mem_mib"); kvm_stop+=("$stop_ms")
done
nspawn_out=$(bash "$here/bench/nspawn-service.sh" "$runs" 2>/dev/null)
nsp_row() { echo "$nspawn_out" | grep -F "| $1" | head -n 1 | cut -d'|' -f3-5; }

printf '\n| %-44s | %10s | %10s | %10s |\n' metric min median max
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 46))" ------------ ------------ ------------
row() { local name=$1; shift; printf '| %-44s | %s |\n' "$name" "$(stats "$@")"; }
row "ns: start -> units active, ms" "${ns_start[@]}"
row "kvm: start -> units active, ms" "${kvm_start[@]}"
printf '| %-44s |%s|\n' "nspawn -b: start -> nginx active, ms" "$(nsp_row 'start -> nginx.service active')"
row "ns: PSS of the pod + stage1-ns, MiB" "${ns_mem[@]}"
row "kvm: VMM RSS + stage1-kvm PSS, MiB" "${kvm_mem[@]}"
printf '| %-44s |%s|\n' "nspawn -b: PSS of the container, MiB" "$(nsp_row "PSS of the container's processes")"
row "ns: stop, ms" "${ns_stop[@]}"
row "kvm: stop, ms" "${kvm_stop[@]}"
printf '| %-44s |%s|\n' "nspawn -b: poweroff, ms" "$(nsp_row 'poweroff')"

if [ "$trace" = 1 ]; then
    name=svc-kvm-trace
    stats_file=$root/fuse-stats.txt
    port=$(free_port)
    "$berth" --root "$root" create --stage1 kvm --rootfs "$img" -u nginx.service -p "$port:80" "$name" > /dev/null
    t0=$(now_us)
    BERTH_KVM_CMDLINE="berth_trace=1 printk.devkmsg=on loglevel=6 ${BERTH_KVM_CMDLINE:-}" \
        BERTH_VMM_FUSE_STATS=$stats_file "$berth" --root "$root" start "$name" > /dev/null
    t1=$(now_us)
    sleep 2
    cp "$stats_file" "$root/fuse-at-active.txt"
    "$berth" --root "$root" stop --timeout 600 "$name"
    echo
    echo "trace boot: units active after $(ms "$t0" "$t1") ms (with trace output); guest clock marks:"
    grep -E 'berth-guest-init: trace|Run /init|Freeing unused' "$root/pods/$name/log/console.log" | tr -d '\r' | sed 's/^/    /'
    echo "FUSE requests until units active (tag opcode count host-µs), by count:"
    sort -k3 -n -r "$root/fuse-at-active.txt" | head -n 14 | sed 's/^/    /'
    awk '{ n += $3; us += $4 } END { printf "    total %d requests, %.1f ms host time\n", n, us / 1000 }' "$root/fuse-at-active.txt"
fi
