#!/usr/bin/env bash
# Boot benchmark of the kvm stage1, in one run:
#  (a) host-side set-up: VMM start (Vm::boot) to the first KVM_RUN;
#  (b) boot-to-init (guest-init's first instruction writes the boot-mark
#      port, as Firecracker's boot timer does) and the total wall time of
#      `berth run --rm --stage1=kvm -- /bin/true`;
#  (c) VMM RSS excluding guest RAM: the Rss of every mapping of the running
#      VMM process (the stage1-kvm's child) except the guest-memory mapping
#      (Firecracker's way).
# Targets: (a) <= 5 ms, (c) <= 5 MiB, boot-to-init <= 30 s on the PVM CI hosts.
# There is no reference VMM to put beside it on these hosts (QEMU does not
# boot under PVM, see shared/docs/KVM-ON-CI.md), so the targets are the
# reference column.
#
#   bench/kvm-boot.sh [RUNS]      (default 3; each run is a full guest boot)
set -euo pipefail
runs=${1:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$(command -v berth || echo "$here/target/release/berth")}
img=$(bash "$here/images/busybox.sh")
root=$(mktemp -d /tmp/berth-kvmbench-XXXXXX)
trap 'rm -rf "$root"' EXIT
mem_mib=256

echo "bench/kvm-boot.sh: $runs boots; $(nproc) CPUs; kernel $(uname -r); $(date -u +%F)"
[ -e /sys/module/kvm_pvm ] && echo "host KVM: PVM (nested, guest kernel emulated)"
setup=(); boot=(); total=()
for i in $(seq 1 "$runs"); do
    start=$(date +%s%N)
    log=$("$berth" --root "$root" --log-level debug run --rm --stage1=kvm --memory ${mem_mib}m \
        --rootfs "$img" -- /bin/true 2>&1 >/dev/null)
    end=$(date +%s%N)
    line=$(echo "$log" | grep 'stage1-kvm: setup' | tail -1)
    s=$(echo "$line" | sed -E 's/.*setup ([0-9.]+)(m?s|µs).*/\1 \2/')
    b=$(echo "$line" | sed -E 's/.*boot-to-init Some\(([0-9.]+)s\).*/\1/')
    setup+=("$(echo "$s" | awk '{ v=$1; if ($2=="s") v*=1000; if ($2=="µs") v/=1000; printf "%.2f", v }')")
    boot+=("$b")
    total+=("$(( (end - start) / 1000000 ))")
    echo "  boot $i: setup ${setup[-1]} ms, boot-to-init ${boot[-1]} s, total ${total[-1]} ms" >&2
done

# (c): a pod that stays up; sample its VMM once guest-init has started.
name=rss-probe
"$berth" --root "$root" --log-level info run -d --name $name --stage1=kvm --memory ${mem_mib}m \
    --rootfs "$img" -- sleep 600 >/dev/null
pod="$root/pods/$name"
# `run -d` returns once guest-init has started the app. The VMM is the
# stage1's child process (the stage1 itself holds no guest memory).
pid=$(pgrep -P "$(cat "$pod/pid")" | head -1)
# Guest RAM is not one mapping: the VMM maps the kernel's segments from the
# vmlinux file over parts of it (vmm/src/kernel.rs). Skip the run of
# contiguous rw-p mappings that spans exactly the guest's memory size.
guest_bytes=$((mem_mib << 20)); starts=(); ends=(); perms=(); rss=()
while read -r a b _; do
    if [[ $a =~ ^([0-9a-f]+)-([0-9a-f]+)$ ]]; then
        starts+=($((0x${BASH_REMATCH[1]}))); ends+=($((0x${BASH_REMATCH[2]}))); perms+=("$b"); rss+=(0)
    elif [[ $a == Rss: ]]; then
        rss[-1]=$b
    fi
done < "/proc/$pid/smaps"
skip=()
for ((i = 0; i < ${#starts[@]}; i++)); do
    [[ ${perms[i]} == rw-p ]] || continue
    for ((j = i; j < ${#starts[@]}; j++)); do
        [[ ${perms[j]} == rw-p ]] && (( j == i || starts[j] == ends[j - 1] )) || break
        if (( ends[j] - starts[i] == guest_bytes )); then
            for ((k = i; k <= j; k++)); do skip[k]=1; done
            break 2
        fi
        (( ends[j] - starts[i] < guest_bytes )) || break
    done
done
rss_kib=0
for ((i = 0; i < ${#starts[@]}; i++)); do
    [[ -n ${skip[i]:-} ]] || rss_kib=$((rss_kib + rss[i]))
done
"$berth" --root "$root" rm -f $name

med() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m }'; }
printf '\n| %-38s | %10s | %10s |\n' "metric" "berth" "target"
printf '|-%-38s-|-%10s-|-%10s-|\n' "--------------------------------------" "----------" "----------"
printf '| %-38s | %10s | %10s |\n' "(a) set-up to first KVM_RUN, ms" "$(med "${setup[@]}")" "<= 5"
printf '| %-38s | %10.1f | %10s |\n' "(b) boot-to-init, s" "$(med "${boot[@]}")" "<= 30"
printf '| %-38s | %10s | %10s |\n' "(b) run --rm -- /bin/true, total ms" "$(med "${total[@]}")" "-"
printf '| %-38s | %10s | %10s |\n' "(c) VMM RSS excluding guest RAM, MiB" "$(awk -v k="$rss_kib" 'BEGIN { printf "%.2f", k / 1024 }')" "<= 5"
