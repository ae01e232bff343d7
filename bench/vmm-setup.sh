#!/usr/bin/env bash
# VMM set-up time, (a) of bench/kvm-boot.sh without stage1: Vm::boot to
# vCPU 0's first KVM_RUN, from vmm/examples/boot.rs, stopped right after it
# (--timeout 0), with a guest-init initramfs like stage1-kvm's. Variants run
# round-robin so that they see the same load; prints min/median/max in ms.
#
#   cargo build --release -p vmm --example boot   (copy the binary per variant)
#   bench/vmm-setup.sh [--quiet] N BOOT_BIN[=VAR=VALUE]...
#   e.g. bench/vmm-setup.sh --quiet 20 ./boot-old ./boot-new ./boot-new=BERTH_VMM_COPY_KERNEL=1
#
# --quiet: start a round only when the machine is >= 85 % idle over 0.5 s.
set -euo pipefail
quiet=0
if [ "${1:-}" = --quiet ]; then quiet=1; shift; fi
n=${1:?usage: vmm-setup.sh [--quiet] N BOOT_BIN[=VAR=VALUE]...}; shift
kernel=${KERNEL:-/usr/local/lib/berth/vmlinux}
init=${GUEST_INIT:-/usr/local/lib/berth/berth-guest-init}
tmp=$(mktemp -d /tmp/berth-vmmsetup-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/root/dev" && cp "$init" "$tmp/root/init"
(cd "$tmp/root" && find . | cpio -o -H newc 2>/dev/null) > "$tmp/initramfs.cpio"

idle() {
    local a b
    read -r -a a < /proc/stat; sleep 0.5; read -r -a b < /proc/stat
    local t=0 i
    for i in 1 2 3 4 5 6 7 8; do t=$((t + b[i] - a[i])); done
    echo $((100 * (b[4] - a[4]) / (t > 0 ? t : 1)))
}
echo "vmm-setup.sh: $n rounds; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F)"
declare -A res
round=0
while [ $round -lt "$n" ]; do
    if [ $quiet = 1 ] && [ "$(idle)" -lt 85 ]; then sleep 2; continue; fi
    for v in "$@"; do
        bin=${v%%=*}; envs=()
        [[ $v == *=* ]] && envs=("${v#*=}")
        line=$(env "${envs[@]}" RUST_LOG=warn "$bin" --kernel "$kernel" \
            --initramfs "$tmp/initramfs.cpio" --timeout 0 2>&1 >/dev/null | grep 'first KVM_RUN)')
        ms=$(echo "$line" | sed -E 's/.*first KVM_RUN\) ([0-9.]+)(m?s|µs).*/\1 \2/' |
            awk '{ v = $1; if ($2 == "s") v *= 1000; if ($2 == "µs") v /= 1000; printf "%.2f", v }')
        res[$v]+="$ms "
    done
    round=$((round + 1))
done
for v in "$@"; do
    printf '%s: %s\n' "$v" "$(printf '%s\n' ${res[$v]} | sort -n | awk '{ a[NR] = $1 }
        END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
              printf "n=%d min %.2f median %.2f max %.2f ms", NR, a[1], m, a[NR] }')"
done
