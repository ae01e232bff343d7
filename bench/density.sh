#!/usr/bin/env bash
# Density of service pods (issue 13 part 2, the seed's scalability test):
# N nginx service pods from the Debian image (images/debian.sh) on the ns
# stage1, against N `systemd-nspawn -b` containers of the same image in the
# same run.
#
#   bench/density.sh [N]              (default 100)
#
# berth: `berth create --rootfs <debian> -u nginx.service -p PORT:80 densI`
# for every pod, then `berth start` in parallel batches of BATCH pods (each
# returns once nginx.service is active), a page fetched from every pod at its
# address on the bridge, and through its published port for SAMPLE pods (the
# stage1's proxy on 127.0.0.1:PORT, and nftables' DNAT on the bridge's own
# address), then memory, processes and idle CPU, a health check of every pod
# (`systemctl is-system-running`, failed units), `berth stop` (batches) and
# `berth rm`, and a check that nothing is left: mounts (/proc/self/mountinfo),
# cgroups, host links, leases, nft set/map elements, pod directories,
# processes.
#
# systemd-nspawn (NSPAWN_N containers, default N; 0 skips it): what
# bench/nspawn-service.sh boots, at scale: `systemd-nspawn -b --register=no
# --keep-unit --link-journal=no --network-bridge=<a bridge of the bench's>`
# of the same image, booting a target that wants only nginx.service (and a
# oneshot reporting readiness through a FIFO), each on an overlay of its own
# with an on-disk upper directory (what a berth pod has; --volatile=overlay
# would put the container's writes, the journal among them, in tmpfs), each
# started in cgroups of its own (so that its CPU and memory can be read);
# the container's address is set with `ip` through nsenter once it is up
# (the image runs no network manager). Stopped with SIGTERM (an orderly
# poweroff), overlays and cgroups removed, and checked like berth's.
#
# Reported (one table, berth | nspawn):
#   start all            first start -> the last pod's nginx active
#   per-pod start        median / p95: launch -> nginx.service active
#                        (systemd's ActiveEnterTimestamp in the pod against
#                        the host's clock at launch); for berth also the wall
#                        time of `berth start` (which returns then)
#   memory per pod       MemAvailable drop / N (baseline before the first
#                        create; other jobs on the machine move it), summed
#                        Pss (smaps_rollup) of every process in the pods'
#                        cgroups / N, the supervisor's (berth-stage1-ns /
#                        systemd-nspawn) Pss / N, and the pods' memory
#                        cgroups' charge / N (page cache included)
#   processes            journald, nginx, all (in the pods' cgroups)
#   idle CPU             over IDLE seconds, the pods' cgroups' CPU time as %
#                        of one core (all N together), and the supervisors'
#   serve                pods answering at their address / through the port
#   health               pods whose systemd reports "running" (not degraded)
#   stop all, rm all     wall time
#   leaks                what is left after rm (must be 0)
# Targets (issue 13): all N serve, <= 20 MiB per pod, idle CPU <= 2 % of a
# core in total, zero leaks.
#
# Environment: BERTH (default target/release/berth, else target/debug/berth),
# BATCH (10: pods started or stopped at once), SAMPLE (10: pods fetched through
# their published port; 0 = all), SETTLE (15 s after the last start before
# measuring), IDLE (30 s CPU window), NSPAWN_N (N), DENSITY_NET (10.231: berth's
# subnet <DENSITY_NET>.0.0/16, bridge bdensity0, nft table berth_density),
# NSPAWN_NET (10.232: the nspawn bridge's /16), PORT_BASE (31000: pod i
# publishes PORT_BASE+i), BERTH_BENCH_IMAGE (the image). Needs root,
# systemd-container, curl, jq, nft, nsenter.
set -euo pipefail

n=${1:-100}
case $n in '' | *[!0-9]* | 0) echo "usage: bench/density.sh [N]" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${BERTH:-}" ]; then berth=$BERTH
elif [ -x "$here/target/release/berth" ]; then berth=$here/target/release/berth
else berth=$here/target/debug/berth; fi
[ -x "$berth" ] || { echo "bench: $berth not found (cargo build)" >&2; exit 1; }
batch=${BATCH:-10}
sample=${SAMPLE:-10}
settle=${SETTLE:-15}
idle=${IDLE:-30}
nspawn_n=${NSPAWN_N:-$n}
bnet=${DENSITY_NET:-10.231}
nnet=${NSPAWN_NET:-10.232}
port_base=${PORT_BASE:-31000}
for t in curl jq nft nsenter ip; do command -v $t >/dev/null || { echo "bench: $t missing (make setup)" >&2; exit 1; }; done
if [ "$nspawn_n" -gt 0 ] && ! command -v systemd-nspawn >/dev/null; then
    echo "bench: systemd-nspawn missing (apt-get install systemd-container); NSPAWN_N=0 skips it" >&2; exit 1
fi
[ "$n" -le 60000 ] && [ "$nspawn_n" -le 60000 ] || { echo "bench: at most 60000 pods (a /16)" >&2; exit 2; }
for net in "$bnet" "$nnet"; do
    if ip -4 -o route show | awk '{ print $1 }' | grep -q "^${net//./\\.}\."; then
        echo "bench: the host already routes $net.0.0/16; choose another DENSITY_NET / NSPAWN_NET" >&2; exit 1
    fi
done
if ss -Htln | awk '{ n = split($4, a, ":"); print a[n] }' |
    awk -v lo=$((port_base + 1)) -v hi=$((port_base + n)) '$1 >= lo && $1 <= hi { bad = 1 } END { exit !bad }'; then
    echo "bench: a port in $((port_base + 1))-$((port_base + n)) is in use; choose another PORT_BASE" >&2; exit 1
fi
img=${BERTH_BENCH_IMAGE:-$(bash "$here/images/debian.sh" | tail -n 1)}
[ -x "$img/usr/lib/systemd/systemd" ] || { echo "bench: $img is not a systemd image" >&2; exit 1; }

work=$(mktemp -d /tmp/berth-density-XXXXXX)
root=$work/root
bridge=bdensity0
table=berth_density
nbridge=bdensityn0
mkdir -p "$root" "$work/b" "$work/n" "$work/units"
printf '[network]\nbridge = "%s"\nsubnet = "%s.0.0/16"\nnft_table = "%s"\ndns = ["192.0.2.53"]\n' \
    "$bridge" "$bnet" "$table" > "$root/berth.toml"
B() { "$berth" --root "$root" "$@"; }

# cgroup layout: v2 (unified at /sys/fs/cgroup) or v1/hybrid.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    cgv2=1
    mem_h=/sys/fs/cgroup cpu_h=/sys/fs/cgroup
    nspawn_hier=(/sys/fs/cgroup)
else
    cgv2=0
    mem_h=/sys/fs/cgroup/memory cpu_h=/sys/fs/cgroup/cpuacct
    nspawn_hier=("$mem_h" "$cpu_h")
    for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do [ -d "$h" ] && nspawn_hier+=("$h"); done
fi
ncg=berth-density-$$

log() { printf '[%(%T)T] %s\n' -1 "$*" >&2; }
now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
avail_kib() { # mean of 5 samples over a second
    local s=0 i
    for i in 1 2 3 4 5; do s=$((s + $(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo))); sleep 0.2; done
    echo $((s / 5))
}
# stats FILE: "median p95" of the numbers in FILE (one a line), or "- -".
stats() {
    sort -g "$1" | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "- -"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        i = int(NR * 0.95 + 0.999999); if (i > NR) i = NR; if (i < 1) i = 1
        printf "%.0f %.0f\n", m, v[i] }'
}
ts_us() { date -u -d "${1#* }" +%s%6N; } # "Thu 2026-12-03 11:52:59.053421 UTC" -> µs
# The memory and cpu cgroup directories of PID (its pod's: for a pod's
# systemd on cgroup v2, the parent of its init.scope).
cg_of() {
    local pid=$1 what=$2 line path
    if [ "$cgv2" = 1 ]; then
        path=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
        path=${path%/init.scope}
        echo "/sys/fs/cgroup$path"
        return
    fi
    line=$(grep -E "^[0-9]+:([^:]*,)?$what(,[^:]*)?:" "/proc/$pid/cgroup")
    path=${line#*:*:}
    if [ "$what" = memory ]; then echo "$mem_h$path"; else echo "$cpu_h$path"; fi
}
cg_pids() { find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null; }
cg_mem_bytes() { if [ "$cgv2" = 1 ]; then cat "$1/memory.current"; else cat "$1/memory.usage_in_bytes"; fi; }
cg_cpu_ns() {
    if [ "$cgv2" = 1 ]; then awk '$1 == "usage_usec" { print $2 * 1000 }' "$1/cpu.stat"; else cat "$1/cpuacct.usage"; fi
}
pss_kib() { awk '/^Pss:/ { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
proc_cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
clk_tck=$(getconf CLK_TCK)
host_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }

# census KIND LIST: for every "<pod pid> <supervisor pid>" line of LIST, the
# processes in the pod's memory cgroup: sets pss_k (KiB, summed), sup_k
# (supervisors' Pss), cgmem_b (memory cgroups' charge, bytes), nproc, njournal,
# nnginx, and writes the cpu cgroup directories to $work/KIND/cpu-cgs.
census() {
    local kind=$1 list=$2 pod sup cg p c
    pss_k=0 sup_k=0 cgmem_b=0 nproc=0 njournal=0 nnginx=0
    : > "$work/$kind/cpu-cgs"
    while read -r pod sup; do
        cg=$(cg_of "$pod" memory)
        cgmem_b=$((cgmem_b + $(cg_mem_bytes "$cg")))
        cg_of "$pod" cpuacct >> "$work/$kind/cpu-cgs"
        for p in $(cg_pids "$cg"); do
            [ "$p" = "$sup" ] && continue
            c=$(cat "/proc/$p/comm" 2>/dev/null) || continue
            pss_k=$((pss_k + $(pss_kib "$p"))) nproc=$((nproc + 1))
            case $c in systemd-journal) njournal=$((njournal + 1)) ;; nginx) nnginx=$((nnginx + 1)) ;; esac
        done
        sup_k=$((sup_k + $(pss_kib "$sup")))
    done < "$list"
}
# idle_cpu KIND LIST: over $idle s, the CPU time of the cgroups in
# $work/KIND/cpu-cgs (minus the supervisors' when they are inside, as
# nspawn's are) and of the supervisors: sets cpu_pods_pct, cpu_sup_pct,
# host_pct (the whole machine's busy %, for context).
idle_cpu() {
    local kind=$1 list=$2 sup_inside=$3 cg a0=0 a1=0 s0=0 s1=0 sup pod h0 h1
    for cg in $(cat "$work/$kind/cpu-cgs"); do a0=$((a0 + $(cg_cpu_ns "$cg"))); done
    while read -r pod sup; do s0=$((s0 + $(proc_cpu_ticks "$sup"))); done < "$list"
    h0=$(host_busy)
    sleep "$idle"
    for cg in $(cat "$work/$kind/cpu-cgs"); do a1=$((a1 + $(cg_cpu_ns "$cg"))); done
    while read -r pod sup; do s1=$((s1 + $(proc_cpu_ticks "$sup"))); done < "$list"
    h1=$(host_busy)
    log "$kind: the pods' cpu cgroups ($(wc -l < "$work/$kind/cpu-cgs")) hold $(awk -v a="$a1" 'BEGIN { printf "%.1f", a / 1e9 }') s of CPU since their start"
    local sup_ns=$(( (s1 - s0) * 1000000000 / clk_tck ))
    local pods_ns=$((a1 - a0))
    [ "$sup_inside" = 1 ] && pods_ns=$((pods_ns - sup_ns))
    [ "$pods_ns" -lt 0 ] && pods_ns=0
    cpu_pods_pct=$(awk -v a="$pods_ns" -v t="$idle" 'BEGIN { printf "%.2f", a / (t * 1e9) * 100 }')
    cpu_sup_pct=$(awk -v a="$sup_ns" -v t="$idle" 'BEGIN { printf "%.2f", a / (t * 1e9) * 100 }')
    host_pct=$(echo "$h0 $h1" | awk '{ printf "%.0f", ($3 - $1) / ($4 - $2) * 100 }')
}
# fetch URL: does it serve Debian's nginx page?
fetch() { curl -fsS -m 10 "$1" 2>/dev/null | grep -q 'Welcome to nginx'; }
# sample_of I: is pod I one of the SAMPLE fetched through its port?
sample_of() {
    local total=$1 i=$2
    [ "$sample" -eq 0 ] || [ "$sample" -ge "$total" ] && return 0
    [ $(( (i - 1) % (total / sample) )) -eq 0 ] && [ $(( (i - 1) / (total / sample) )) -lt "$sample" ]
}
# existing / alive: how many of the paths / pids on stdin exist / run.
existing() { local d c=0; while read -r d; do if [ -e "$d" ]; then c=$((c + 1)); fi; done; echo "$c"; }
alive() { local p c=0; while read -r p; do if kill -0 "$p" 2>/dev/null; then c=$((c + 1)); fi; done; echo "$c"; }
mountinfo_count() { grep -c "$work" /proc/self/mountinfo || true; }

declare -A R # results: R[key.berth], R[key.nspawn]

cleanup() {
    set +e
    if [ -d "$root/pods" ]; then
        for p in $(ls "$root/pods" 2>/dev/null); do B rm -f "$p" >/dev/null 2>&1; done
    fi
    B network rm --force >/dev/null 2>&1
    local f pid
    for f in "$work"/n/*/nspawn.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f"); kill -KILL "$pid" 2>/dev/null
    done
    for f in "$work"/n/*/nspawn.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f"); while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    done
    grep " $work/n/" /proc/self/mountinfo | awk '{ print $5 }' | sort -r | while read -r m; do umount -l "$m"; done
    local h
    for h in "${nspawn_hier[@]}"; do
        [ -d "$h/$ncg" ] && find "$h/$ncg" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    ip link del "$nbridge" 2>/dev/null
    [ -n "${BERTH_BENCH_KEEP:-}" ] && echo "bench: kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

echo "bench/density.sh: N=$n (nspawn: $nspawn_n), batches of $batch; $(nproc) CPUs, $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); kernel $(uname -r); cgroup $([ $cgv2 = 1 ] && echo v2 || echo v1/hybrid); fs.inotify.max_user_instances $(cat /proc/sys/fs/inotify/max_user_instances); image $img; berth $berth; $(date -u '+%F %T UTC'); load $(load)"

# ---------------------------------------------------------------- berth
run_berth() {
    local i s e t0 rc name
    log "berth: baseline MemAvailable (load $(load))"
    local m0 mnt0; m0=$(avail_kib); mnt0=$(mountinfo_count)
    log "berth: creating $n pods"
    s=$(now_us)
    for i in $(seq 1 "$n"); do
        B create --rootfs "$img" -u nginx.service -p $((port_base + i)):80 "dens$i" > /dev/null
    done
    R[create.berth]=$(( ($(now_us) - s) / 1000 ))
    log "berth: created in ${R[create.berth]} ms; starting in batches of $batch"
    mkdir -p "$work/b/start"
    t0=$(now_us)
    for ((i = 1; i <= n; i += batch)); do
        local j last=$((i + batch - 1)); [ "$last" -gt "$n" ] && last=$n
        for ((j = i; j <= last; j++)); do
            (
                s=$(now_us)
                echo "$s" > "$work/b/start/$j.t0"
                if B start "dens$j" > "$work/b/start/$j.log" 2>&1; then
                    echo $(( ($(now_us) - s) / 1000 )) > "$work/b/start/$j.ms"
                fi
            ) &
        done
        wait
        log "berth: started $last/$n ($(( ($(now_us) - t0) / 1000000 )) s, load $(load))"
    done
    R[startall.berth]=$(( ($(now_us) - t0) / 1000 ))
    local failed=0
    for i in $(seq 1 "$n"); do
        if [ ! -f "$work/b/start/$i.ms" ]; then
            failed=$((failed + 1))
            [ "$failed" -le 3 ] && log "berth: start dens$i failed: $(tr '\n' ' ' < "$work/b/start/$i.log")"
        fi
    done
    R[startfail.berth]=$failed
    cat "$work"/b/start/*.ms 2>/dev/null > "$work/b/start-wall.txt" || true
    read -r "R[startwall_med.berth]" "R[startwall_p95.berth]" < <(stats "$work/b/start-wall.txt")

    B list --format json > "$work/b/list.json"
    jq -r '.[] | select(.state == "running") | "\(.name) \(.pid) \(.address) \(.uuid)"' \
        "$work/b/list.json" > "$work/b/running"
    R[running.berth]=$(wc -l < "$work/b/running")
    jq -r '.[].uuid' "$work/b/list.json" > "$work/b/uuids"
    : > "$work/b/pods"
    while read -r name pid addr uuid; do
        echo "$pid $(awk '{ print $4 }' "/proc/$pid/stat")" >> "$work/b/pods"
    done < "$work/b/running"
    log "berth: ${R[running.berth]} running; settling ${settle} s"
    sleep "$settle"

    log "berth: fetching a page from every pod (and through the port of $([ "$sample" = 0 ] && echo all || echo "$sample"))"
    local ok=0 okp=0 okd=0 tried=0 gw="$bnet.0.1"
    while read -r name pid addr uuid; do
        i=${name#dens}
        fetch "http://$addr/" && ok=$((ok + 1))
        if sample_of "$n" "$i"; then
            tried=$((tried + 1))
            fetch "http://127.0.0.1:$((port_base + i))/" && okp=$((okp + 1))
            fetch "http://$gw:$((port_base + i))/" && okd=$((okd + 1))
        fi
    done < "$work/b/running"
    R[serve.berth]=$ok R[serveport.berth]="$okp/$tried proxy, $okd/$tried DNAT"
    sleep 3

    log "berth: memory and processes"
    local m1; m1=$(avail_kib)
    R[avail.berth]=$(( (m0 - m1) / n ))
    census b "$work/b/pods"
    R[pss.berth]=$((pss_k / n)) R[sup.berth]=$((sup_k / n)) R[cgmem.berth]=$((cgmem_b / 1024 / n))
    R[procs.berth]="$njournal / $nnginx / $nproc"
    log "berth: idle CPU over ${idle} s"
    idle_cpu b "$work/b/pods" 0
    R[cpu.berth]=$cpu_pods_pct R[cpusup.berth]=$cpu_sup_pct R[host.berth]=$host_pct

    log "berth: health of every pod (systemctl is-system-running, failed units) and systemd's timestamps"
    local healthy=0 nfailed=0 out st at failed_units
    : > "$work/b/start-active.txt"
    : > "$work/b/degraded"
    while read -r name pid addr uuid; do
        i=${name#dens}
        out=$(B exec "$name" -- sh -c 'systemctl is-system-running; systemctl show --timestamp=us+utc -p ActiveEnterTimestamp --value nginx.service; systemctl --failed --no-legend --plain | awk "{ print \$1 }" | tr "\n" " "; echo' 2>&1) || true
        st=$(sed -n 1p <<< "$out"); at=$(sed -n 2p <<< "$out"); failed_units=$(sed -n 3p <<< "$out")
        if [ "$st" = running ]; then healthy=$((healthy + 1)); else echo "$name $st: $failed_units" >> "$work/b/degraded"; fi
        [ -n "$failed_units" ] && [ "$failed_units" != " " ] && nfailed=$((nfailed + 1))
        if [ -n "$at" ] && t=$(ts_us "$at" 2> /dev/null); then
            echo $(( (t - $(cat "$work/b/start/$i.t0")) / 1000 )) >> "$work/b/start-active.txt"
        fi
    done < "$work/b/running"
    R[healthy.berth]=$healthy
    read -r "R[startact_med.berth]" "R[startact_p95.berth]" < <(stats "$work/b/start-active.txt")
    if [ -s "$work/b/degraded" ]; then
        log "berth: not running: $(head -n 3 "$work/b/degraded" | tr '\n' ';')"
        local one; one=$(head -n 1 "$work/b/degraded" | cut -d' ' -f1)
        log "berth: $one's journal, warnings: $(B exec "$one" -- journalctl --no-pager -b -p warning -o cat 2>/dev/null | sort | uniq -c | sort -rn | head -n 3 | tr -s ' \n' ' ')"
    fi

    log "berth: stopping in batches of $batch"
    s=$(now_us)
    for ((i = 1; i <= n; i += batch)); do
        local j last=$((i + batch - 1)); [ "$last" -gt "$n" ] && last=$n
        for ((j = i; j <= last; j++)); do
            ( B stop "dens$j" > "$work/b/stop-$j.log" 2>&1 || echo "dens$j: $(cat "$work/b/stop-$j.log")" >> "$work/b/stop-failed" ) &
        done
        wait
    done
    R[stopall.berth]=$(( ($(now_us) - s) / 1000 ))
    [ -f "$work/b/stop-failed" ] && log "berth: stop failed: $(head -n 3 "$work/b/stop-failed" | tr '\n' ';')"
    log "berth: removing"
    s=$(now_us)
    for i in $(seq 1 "$n"); do B rm "dens$i" > /dev/null 2>> "$work/b/rm-failed" || true; done
    R[rmall.berth]=$(( ($(now_us) - s) / 1000 ))
    [ -s "$work/b/rm-failed" ] && log "berth: rm failed: $(head -n 3 "$work/b/rm-failed" | tr '\n' ';')"

    log "berth: checking that nothing is left"
    local leaks=() c u
    c=$(( $(mountinfo_count) - mnt0 )); c=$((c + $(grep -cF -f "$work/b/uuids" /proc/self/mountinfo || true)))
    [ "$c" -gt 0 ] && leaks+=("$c mounts")
    c=0
    while read -r u; do
        for d in /sys/fs/cgroup/*/berth/"$u" /sys/fs/cgroup/berth/"$u"; do [ -e "$d" ] && c=$((c + 1)); done
    done < "$work/b/uuids"
    c=$((c + $(existing < "$work/b/cpu-cgs")))
    [ "$c" -gt 0 ] && leaks+=("$c cgroups")
    c=$(ip -o link show | awk -F': ' '{ print $2 }' | cut -d@ -f1 |
        grep -cF -f <(sed 's/-//g; s/^\(.\{12\}\).*/\1/' "$work/b/uuids") || true)
    c=$((c + $(ip -o link show master "$bridge" 2>/dev/null | wc -l)))
    [ "$c" -gt 0 ] && leaks+=("$c links")
    c=$(find "$root/net/leases" -mindepth 1 2>/dev/null | wc -l)
    [ "$c" -gt 0 ] && leaks+=("$c leases")
    c=0
    for fam in ip bridge; do
        c=$((c + $(nft -j list table $fam "$table" 2>/dev/null |
            jq '[.nftables[] | (.set // .map // empty) | (.elem // []) | length] | add // 0')))
    done
    [ "$c" -gt 0 ] && leaks+=("$c nft elements")
    c=$(find "$root/pods" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    [ "$c" -gt 0 ] && leaks+=("$c pod dirs")
    c=$( (pgrep -f -- "$root/" || true) | wc -l)
    c=$((c + $(awk '{ print $1 }' "$work/b/pods" | alive)))
    [ "$c" -gt 0 ] && leaks+=("$c processes")
    B network rm > /dev/null 2>&1 || leaks+=("network rm failed")
    ip link show "$bridge" > /dev/null 2>&1 && leaks+=("bridge")
    nft list table ip "$table" > /dev/null 2>&1 && leaks+=("nft table")
    R[leaks.berth]=$([ ${#leaks[@]} -eq 0 ] && echo 0 || (IFS=,; echo "${leaks[*]}"))
    log "berth: done; leaks: ${R[leaks.berth]}"
}

# ---------------------------------------------------------------- nspawn
run_nspawn() {
    local nn=$nspawn_n i s t0 h
    cat > "$work/units/berth-bench.target" <<'EOF'
[Unit]
Description=berth bench: nginx only
Wants=nginx.service berth-bench-ready.service
After=nginx.service berth-bench-ready.service
AllowIsolate=yes
EOF
    cat > "$work/units/berth-bench-ready.service" <<'EOF'
[Unit]
Description=berth bench: report nginx.service active to the host
Requires=nginx.service
After=nginx.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo active > /run/berth-bench/ready'
EOF
    ip link add "$nbridge" type bridge
    ip addr add "$nnet.0.1/16" dev "$nbridge"
    ip link set "$nbridge" up
    log "nspawn: baseline MemAvailable (load $(load))"
    local m0 mnt0; m0=$(avail_kib); mnt0=$(mountinfo_count)
    log "nspawn: preparing $nn overlays"
    for i in $(seq 1 "$nn"); do
        local d=$work/n/$i
        mkdir -p "$d/upper" "$d/work" "$d/root" "$d/ready"
        mount -t overlay overlay -o "lowerdir=$img,upperdir=$d/upper,workdir=$d/work" "$d/root"
        mkfifo "$d/ready/ready"
        for h in "${nspawn_hier[@]}"; do mkdir -p "$h/$ncg/c$i"; done
    done
    log "nspawn: booting in batches of $batch"
    t0=$(now_us)
    for ((i = 1; i <= nn; i += batch)); do
        local j last=$((i + batch - 1)); [ "$last" -gt "$nn" ] && last=$nn
        for ((j = i; j <= last; j++)); do
            local d=$work/n/$j
            now_us > "$d/t0"
            (
                for h in "${nspawn_hier[@]}"; do echo "$BASHPID" > "$h/$ncg/c$j/cgroup.procs"; done
                exec systemd-nspawn -q -b --register=no --keep-unit --link-journal=no \
                    --network-bridge="$nbridge" --console=pipe -M "bdn$j" -D "$d/root" \
                    --bind-ro="$work/units/berth-bench.target:/etc/systemd/system/berth-bench.target" \
                    --bind-ro="$work/units/berth-bench-ready.service:/etc/systemd/system/berth-bench-ready.service" \
                    --bind="$d/ready:/run/berth-bench" \
                    systemd.unit=berth-bench.target < /dev/null > "$d/console.log" 2>&1
            ) &
            echo $! > "$d/nspawn.pid"
        done
        for ((j = i; j <= last; j++)); do
            local d=$work/n/$j line
            if read -r -t 180 line <> "$d/ready/ready"; then
                now_us > "$d/ready.t"
            else
                log "nspawn: bdn$j not ready within 180 s: $(tail -n 3 "$d/console.log" | tr '\n' ' ')"
            fi
        done
        log "nspawn: booted $last/$nn ($(( ($(now_us) - t0) / 1000000 )) s, load $(load))"
    done
    R[startall.nspawn]=$(( ($(now_us) - t0) / 1000 ))
    : > "$work/n/pods"; : > "$work/n/running"
    local failed=0 leader sup
    for i in $(seq 1 "$nn"); do
        local d=$work/n/$i
        sup=$(cat "$d/nspawn.pid")
        leader=$(pgrep -P "$sup" | head -n 1 || true)
        if [ ! -f "$d/ready.t" ] || [ -z "$leader" ]; then failed=$((failed + 1)); continue; fi
        echo "$leader $sup" >> "$work/n/pods"
        local addr="$nnet.$(( (i + 1) / 250 )).$(( (i + 1) % 250 + 2 ))"
        nsenter -t "$leader" -n sh -c "ip addr add $addr/16 dev host0 && ip link set host0 up" \
            || log "nspawn: cannot configure bdn$i's host0"
        echo "bdn$i $leader $addr $i" >> "$work/n/running"
    done
    R[startfail.nspawn]=$failed R[running.nspawn]=$(wc -l < "$work/n/running")
    : > "$work/n/start-active.txt"
    while read -r name leader addr i; do
        local v
        v=$(nsenter -t "$leader" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            systemctl show --timestamp=us+utc -p ActiveEnterTimestamp --value nginx.service 2>/dev/null) || continue
        [ -n "$v" ] && echo $(( ($(ts_us "$v") - $(cat "$work/n/$i/t0")) / 1000 )) >> "$work/n/start-active.txt"
    done < "$work/n/running"
    read -r "R[startact_med.nspawn]" "R[startact_p95.nspawn]" < <(stats "$work/n/start-active.txt")
    log "nspawn: ${R[running.nspawn]} running; settling ${settle} s"
    sleep "$settle"

    log "nspawn: fetching a page from every container"
    local ok=0
    while read -r name leader addr i; do fetch "http://$addr/" && ok=$((ok + 1)); done < "$work/n/running"
    R[serve.nspawn]=$ok R[serveport.nspawn]="-"
    sleep 3
    log "nspawn: memory and processes"
    local m1; m1=$(avail_kib)
    R[avail.nspawn]=$(( (m0 - m1) / nn ))
    census n "$work/n/pods"
    # The container's cgroups are the bench's c<I>, which hold nspawn too.
    : > "$work/n/cpu-cgs"
    for i in $(seq 1 "$nn"); do echo "$cpu_h/$ncg/c$i" >> "$work/n/cpu-cgs"; done
    local pss_all=$pss_k
    pss_all=$((pss_k))
    R[pss.nspawn]=$((pss_all / nn)) R[sup.nspawn]=$((sup_k / nn))
    # memory cgroups' charge: c<I> includes the supervisor's own.
    cgmem_b=0
    for i in $(seq 1 "$nn"); do cgmem_b=$((cgmem_b + $(cg_mem_bytes "${nspawn_hier[0]}/$ncg/c$i"))); done
    R[cgmem.nspawn]="$((cgmem_b / 1024 / nn)) (incl. nspawn)"
    R[procs.nspawn]="$njournal / $nnginx / $nproc"
    log "nspawn: idle CPU over ${idle} s"
    idle_cpu n "$work/n/pods" 1
    R[cpu.nspawn]=$cpu_pods_pct R[cpusup.nspawn]=$cpu_sup_pct R[host.nspawn]=$host_pct
    local healthy=0 st
    while read -r name leader addr i; do
        st=$(nsenter -t "$leader" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin systemctl is-system-running 2>/dev/null || true)
        [ "$st" = running ] && healthy=$((healthy + 1))
    done < "$work/n/running"
    R[healthy.nspawn]=$healthy

    log "nspawn: powering off in batches of $batch"
    s=$(now_us)
    for ((i = 1; i <= nn; i += batch)); do
        local j last=$((i + batch - 1)); [ "$last" -gt "$nn" ] && last=$nn
        for ((j = i; j <= last; j++)); do kill -TERM "$(cat "$work/n/$j/nspawn.pid")" 2>/dev/null || true; done
        for ((j = i; j <= last; j++)); do
            local p k; p=$(cat "$work/n/$j/nspawn.pid")
            for k in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$p" 2>/dev/null && { log "nspawn: bdn$j did not power off in 30 s; killing it"; kill -KILL "$p"; }
            wait "$p" 2>/dev/null || true
        done
    done
    R[stopall.nspawn]=$(( ($(now_us) - s) / 1000 ))
    s=$(now_us)
    for i in $(seq 1 "$nn"); do
        umount "$work/n/$i/root"
        for h in "${nspawn_hier[@]}"; do find "$h/$ncg/c$i" -depth -type d -exec rmdir {} +; done
        rm -rf "$work/n/$i"
    done
    for h in "${nspawn_hier[@]}"; do rmdir "$h/$ncg"; done
    R[rmall.nspawn]=$(( ($(now_us) - s) / 1000 ))
    local leaks=() c
    c=$(( $(mountinfo_count) - mnt0 )); [ "$c" -gt 0 ] && leaks+=("$c mounts")
    c=$(ip -o link show master "$nbridge" | wc -l); [ "$c" -gt 0 ] && leaks+=("$c links")
    c=0; for h in "${nspawn_hier[@]}"; do [ -e "$h/$ncg" ] && c=$((c + 1)); done
    [ "$c" -gt 0 ] && leaks+=("$c cgroups")
    c=$(awk '{ print $1 }' "$work/n/pods" | alive)
    [ "$c" -gt 0 ] && leaks+=("$c processes")
    ip link del "$nbridge"
    R[leaks.nspawn]=$([ ${#leaks[@]} -eq 0 ] && echo 0 || (IFS=,; echo "${leaks[*]}"))
    log "nspawn: done; leaks: ${R[leaks.nspawn]}"
}

run_berth
if [ "$nspawn_n" -gt 0 ]; then run_nspawn; fi

# ---------------------------------------------------------------- table
v() { echo "${R[$1]:--}"; }
mib() { [ "${R[$1]:-}" = "" ] && echo - || awk -v k="${R[$1]%% *}" -v rest="${R[$1]#* }" -v whole="${R[$1]}" \
    'BEGIN { s = sprintf("%.1f", k / 1024); if (rest != whole) s = s " " rest; print s }'; }
row() { printf '| %-52s | %-26s | %-26s |\n' "$1" "$2" "$3"; }
echo
row "N = $n (nspawn: $nspawn_n)" "berth (ns, nginx pods)" "systemd-nspawn -b"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 54))" "$(printf -- '-%.0s' $(seq 28))" "$(printf -- '-%.0s' $(seq 28))"
row "start all (batches of $batch), s" "$(awk -v m="$(v startall.berth)" 'BEGIN { printf "%.1f", m / 1000 }')" \
    "$([ "$nspawn_n" -gt 0 ] && awk -v m="$(v startall.nspawn)" 'BEGIN { printf "%.1f", m / 1000 }' || echo -)"
row "failed starts" "$(v startfail.berth)" "$(v startfail.nspawn)"
row "per-pod launch -> nginx active, median / p95, ms" "$(v startact_med.berth) / $(v startact_p95.berth)" "$(v startact_med.nspawn) / $(v startact_p95.nspawn)"
row "per-pod \`berth start\` wall, median / p95, ms" "$(v startwall_med.berth) / $(v startwall_p95.berth)" "-"
row "serving at its address" "$(v serve.berth)/$n" "$([ "$nspawn_n" -gt 0 ] && echo "$(v serve.nspawn)/$nspawn_n" || echo -)"
row "serving through the published port (sample)" "$(v serveport.berth)" "$(v serveport.nspawn)"
row "systemd state \"running\" (not degraded)" "$(v healthy.berth)/$n" "$([ "$nspawn_n" -gt 0 ] && echo "$(v healthy.nspawn)/$nspawn_n" || echo -)"
row "MemAvailable drop / N, MiB" "$(mib avail.berth)" "$(mib avail.nspawn)"
row "Pss of the pods' processes / N, MiB" "$(mib pss.berth)" "$(mib pss.nspawn)"
row "Pss of the supervisor / N, MiB" "$(mib sup.berth) (berth-stage1-ns)" "$(mib sup.nspawn) (systemd-nspawn)"
row "memory cgroup charge / N, MiB" "$(mib cgmem.berth)" "$(mib cgmem.nspawn)"
row "processes: journald / nginx / all" "$(v procs.berth)" "$(v procs.nspawn)"
row "idle CPU of all pods (${idle} s), % of one core" "$(v cpu.berth)" "$(v cpu.nspawn)"
row "idle CPU of the supervisors, % of one core" "$(v cpusup.berth)" "$(v cpusup.nspawn)"
row "  (whole machine busy meanwhile, % of all CPUs)" "$(v host.berth)" "$(v host.nspawn)"
row "stop all (batches of $batch), s" "$(awk -v m="$(v stopall.berth)" 'BEGIN { printf "%.1f", m / 1000 }')" \
    "$([ "$nspawn_n" -gt 0 ] && awk -v m="$(v stopall.nspawn)" 'BEGIN { printf "%.1f", m / 1000 }' || echo -)"
row "rm all, s" "$(awk -v m="$(v rmall.berth)" 'BEGIN { printf "%.1f", m / 1000 }')" \
    "$([ "$nspawn_n" -gt 0 ] && awk -v m="$(v rmall.nspawn)" 'BEGIN { printf "%.1f", m / 1000 }' || echo -)"
row "left behind after rm" "$(v leaks.berth)" "$(v leaks.nspawn)"
echo "(load at the end: $(load); fs.inotify.max_user_instances now $(cat /proc/sys/fs/inotify/max_user_instances))"
