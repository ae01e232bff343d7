#!/usr/bin/env bash
# Host memory per idle busybox VM pod (issue 13 part 3): starts N detached
# `--stage1=kvm --net none` pods running `sleep`, waits until every guest is
# idle, then prints per pod (mean over the N pods, MiB): the stage1
# process' RSS; the VMM process' RSS and PSS including guest RAM and
# excluding it (guest RAM = the guest's memory mapping, found from the
# vmlinux segments mapped into it); and the drop of MemAvailable per pod.
# Runs N=1 then N=10 unless N values are given.
#
#   bench/kvm-mem.sh [N...]        (BERTH=target/debug/berth by default;
#                                   BERTH_KERNEL/BERTH_GUEST_INIT as for berth)
#   SETTLE=20 : seconds to wait after the last pod is running
set -euo pipefail
berth=${BERTH:-target/debug/berth}
kernel=${BERTH_KERNEL:-/usr/local/lib/berth/vmlinux}
settle=${SETTLE:-20}
rootfs=$(bash images/busybox.sh)
root=$(mktemp -d /tmp/berth-kvmmem-XXXXXX)
[ $# -gt 0 ] || set -- 1 10
cleanup() {
    for p in $("$berth" --root "$root" list 2>/dev/null | awk 'NR > 1 { print $1 }'); do
        "$berth" --root "$root" rm -f "$p" >/dev/null 2>&1 || "$berth" --root "$root" stop "$p" >/dev/null 2>&1 || true
    done
    rm -rf "$root"
}
trap cleanup EXIT

avail_kib() { awk '/^MemAvailable:/ { print $2 }' /proc/meminfo; }

# smaps of PID -> "rss_kib pss_kib rss_guest_kib pss_guest_kib anon_kib"
mem_of() {
    python3 - "$1" "$kernel" <<'EOF'
import re, subprocess, sys
pid, kernel = sys.argv[1], sys.argv[2]
segs = []  # (offset, filesz, paddr)
for l in subprocess.run(["readelf", "-lW", kernel], capture_output=True, text=True).stdout.splitlines():
    f = l.split()
    if f and f[0] == "LOAD":
        segs.append((int(f[1], 16), int(f[4], 16), int(f[3], 16)))
entries, cur = [], None
for l in open(f"/proc/{pid}/smaps"):
    m = re.match(r"([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s*(.*)", l)
    if m:
        cur = {"start": int(m[1], 16), "end": int(m[2], 16), "off": int(m[3], 16), "path": m[4], "Rss": 0, "Pss": 0, "Anonymous": 0}
        entries.append(cur)
        continue
    k = l.split(":")[0]
    if cur is not None and k in ("Rss", "Pss", "Anonymous"):
        cur[k] = int(l.split()[1])
bases = set()
for e in entries:
    if e["path"].endswith("vmlinux") or "vmlinux" in e["path"]:
        for off, sz, paddr in segs:
            if off <= e["off"] < off + max(sz, 1):
                bases.add(e["start"] - (paddr + e["off"] - off))
base = min(bases) if bases else None
# Guest RAM: the mapping run from base covering the guest's memory (the
# VMM maps it in one piece; the kernel segments are mapped over it).
lo = hi = None
if base is not None:
    lo = base
    hi = base
    for e in sorted(entries, key=lambda e: e["start"]):
        if e["start"] == hi and (e["path"] == "" or "vmlinux" in e["path"]):
            hi = e["end"]
tot = {k: sum(e[k] for e in entries) for k in ("Rss", "Pss", "Anonymous")}
g = {k: sum(e[k] for e in entries if lo is not None and lo <= e["start"] < hi) for k in ("Rss", "Pss")}
print(tot["Rss"], tot["Pss"], g["Rss"], g["Pss"], tot["Anonymous"], (hi - lo) >> 20 if lo is not None else 0)
EOF
}

printf '%-3s | %-12s | %-14s | %-14s | %-14s | %-14s | %-10s | %s\n' N "stage1 RSS" "VMM RSS" "VMM PSS" "VMM RSS -guest" "VMM PSS -guest" "VMM anon" "MemAvailable drop"
for n in "$@"; do
    sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
    before=$(avail_kib)
    names=()
    for i in $(seq 1 "$n"); do
        name=mem$i-$$
        "$berth" --root "$root" run -d --name "$name" --stage1=kvm --net none --rootfs "$rootfs" -- sleep 3600 >/dev/null
        names+=("$name")
    done
    sleep "$settle"
    sums=(0 0 0 0 0 0 0)
    guest_mib=0
    for name in "${names[@]}"; do
        s1=$("$berth" --root "$root" inspect "$name" | awk '$1 == "pid:" { print $2 }')
        vmm=$(cat /proc/"$s1"/task/*/children | tr ' ' '\n' | grep . | head -1)
        s1rss=$(awk '/^VmRSS:/ { print $2 }' /proc/"$s1"/status)
        read -r rss pss grss gpss anon guest_mib < <(mem_of "$vmm")
        sums=($((sums[0] + s1rss)) $((sums[1] + rss)) $((sums[2] + pss)) $((sums[3] + rss - grss)) $((sums[4] + pss - gpss)) $((sums[5] + anon)))
    done
    after=$(avail_kib)
    m() { awk -v v="$1" -v n="$n" 'BEGIN { printf "%.1f", v / n / 1024 }'; }
    printf '%-3s | %-12s | %-14s | %-14s | %-14s | %-14s | %-10s | %s\n' "$n" "$(m "${sums[0]}")" "$(m "${sums[1]}")" \
        "$(m "${sums[2]}")" "$(m "${sums[3]}")" "$(m "${sums[4]}")" "$(m "${sums[5]}")" "$(m $((before - after)))"
    for name in "${names[@]}"; do
        "$berth" --root "$root" stop "$name" >/dev/null 2>&1 || true
        "$berth" --root "$root" rm "$name" >/dev/null 2>&1 || true
    done
done
echo "(MiB per pod, mean of N; guest RAM mapping ${guest_mib} MiB; settle ${settle} s after start; $(nproc) CPUs; $(date -u +%F))"
