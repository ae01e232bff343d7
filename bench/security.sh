#!/usr/bin/env bash
# What the security layers cost in start time (issue 14), each against the
# same command without it, in one run:
#
#  ns:  `berth run --rm --net none --rootfs <busybox> -- /bin/true`, wall
#       time, rounds interleaved (a shared machine's load hits every case
#       alike): plain (Landlock on, no user namespace), --user-remap,
#       --private-users, and --security-opt landlock=off. Reported: median
#       and the median of the paired differences to "plain".
#  kvm: the VMM process from its start (placed in the pod's cgroup) to the
#       first KVM_RUN, from `--log-level debug`: the overlay mount (made
#       before the jail existed too), the jail (pivot into the tmpfs jail,
#       shares, /dev/kvm fd, user namespace, capabilities, no_new_privs,
#       Landlock) and Vm::boot's set-up, without and with --private-users.
#       The jail is not optional, so its cost is its own steps' time.
#
#   bench/security.sh [NS_ROUNDS] [KVM_BOOTS]     (defaults 30 and 2)
#   BERTH=path/to/berth (default: target/release/berth, else the installed one)
set -euo pipefail
rounds=${1:-30}
boots=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$here/target/release/berth}
[ -x "$berth" ] || berth=$(command -v berth)
img=$(bash "$here/images/busybox.sh")
root=$(mktemp -d /tmp/berth-secbench-XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "bench/security.sh: $rounds ns rounds, $boots kvm boots per case; $(nproc) CPUs; $(uname -r); $(date -u +%F); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "berth: $berth"

cases=(plain remap private nolandlock)
declare -A args=(
    [plain]=""
    [remap]="--user-remap 1000000:1000000:65536"
    [private]="--private-users"
    [nolandlock]="--security-opt landlock=off"
)
declare -A label=(
    [plain]="plain (Landlock on, no userns)"
    [remap]="--user-remap 1000000:1000000:65536"
    [private]="--private-users"
    [nolandlock]="--security-opt landlock=off"
)
declare -A times
for c in "${cases[@]}"; do times[$c]=""; done
for r in $(seq 1 "$rounds"); do
    for c in "${cases[@]}"; do
        # shellcheck disable=SC2086
        t0=$(date +%s%N)
        if ! "$berth" --root "$root" run --rm --net none ${args[$c]} --rootfs "$img" -- /bin/true; then
            echo "bench: $c failed" >&2
            exit 1
        fi
        t1=$(date +%s%N)
        times[$c]+="$(( (t1 - t0) / 1000 )) "
    done
    printf '\r  ns round %d/%d' "$r" "$rounds" >&2
done
echo >&2

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m/1000}'; }
paired() { # median of (case - plain), ms
    paste <(tr ' ' '\n' <<<"${times[$1]}" | grep -v '^$') <(tr ' ' '\n' <<<"${times[plain]}" | grep -v '^$') |
        awk '{print $1-$2}' | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%+.2f", m/1000}'
}

echo
echo "ns: run --rm --net none -- /bin/true (ms, $rounds interleaved rounds)"
printf '| %-36s | %9s | %20s |\n' case median "paired diff vs plain"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..38})" "$(printf -- '-%.0s' {1..11})" "$(printf -- '-%.0s' {1..22})"
for c in "${cases[@]}"; do
    d="-"
    [ "$c" = plain ] || d=$(paired "$c")
    printf '| %-36s | %9s | %20s |\n' "${label[$c]}" "$(median <<<"${times[$c]}")" "$d"
done

if [ "$boots" -eq 0 ] || [ ! -c /dev/kvm ]; then
    echo
    echo "kvm: skipped (no /dev/kvm, or 0 boots asked)"
    exit 0
fi

# Duration as Rust's Debug prints it (1.2ms, 850µs, 2.1s, 30ns) -> ms.
to_ms() { awk '{ v=$1; u=$1; sub(/[0-9.]+/, "", u); sub(/[a-zµ]+$/, "", v);
    if (u=="s") v*=1000; else if (u=="µs"||u=="us") v/=1000; else if (u=="ns") v/=1000000;
    printf "%.2f", v }'; }

declare -A kov kjail kset
for c in plain private; do kov[$c]=""; kjail[$c]=""; kset[$c]=""; done
for b in $(seq 1 "$boots"); do
    for c in plain private; do
        a=""
        [ "$c" = private ] && a="--private-users"
        echo "  kvm boot $b/$boots ($c)..." >&2
        # shellcheck disable=SC2086
        log=$("$berth" --root "$root" --log-level debug run --rm --stage1=kvm --net none $a \
            --rootfs "$img" -- /bin/true 2>&1 >/dev/null) || { echo "$log" | tail -5 >&2; exit 1; }
        jl=$(grep -m1 'VMM overlay' <<<"$log")
        sl=$(grep -m1 'stage1-kvm: setup' <<<"$log")
        kov[$c]+="$(sed -E 's/.*VMM overlay ([^,]+),.*/\1/' <<<"$jl" | to_ms) "
        kjail[$c]+="$(sed -E 's/.*, jail ([^ ]+) .*/\1/' <<<"$jl" | to_ms) "
        kset[$c]+="$(sed -E 's/.*setup ([^,]+),.*/\1/' <<<"$sl" | to_ms) "
    done
done
mmed() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
echo
echo "kvm: VMM start -> first KVM_RUN (ms, median of $boots boots)"
printf '| %-18s | %8s | %8s | %16s | %8s |\n' case overlay jail "Vm::boot set-up" total
printf '|%s|%s|%s|%s|%s|\n' "--------------------" "----------" "----------" "------------------" "----------"
for c in plain private; do
    o=$(mmed <<<"${kov[$c]}"); j=$(mmed <<<"${kjail[$c]}"); s=$(mmed <<<"${kset[$c]}")
    printf '| %-18s | %8s | %8s | %16s | %8s |\n' "$( [ $c = plain ] && echo 'no userns' || echo '--private-users')" \
        "$o" "$j" "$s" "$(awk -v a="$o" -v b="$j" -v c="$s" 'BEGIN{printf "%.2f", a+b+c}')"
done
