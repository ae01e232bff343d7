#!/usr/bin/env bash
# Reference for service pods: `systemd-nspawn -b` of the Debian image
# (images/debian.sh) booting a target that wants only nginx.service, i.e. what
# `berth run --unit nginx.service` is compared with (bench/service.sh).
#
#   bench/nspawn-service.sh [--strace] [RUNS]     (default 5 runs)
#
# Each run boots
#   systemd-nspawn -b --register=no --keep-unit --volatile=overlay
#       --private-network --link-journal=no -D <image>
#       systemd.unit=berth-bench.target
# (--register=no --keep-unit: no system bus on these machines; the image stays
# clean under a tmpfs overlay; --private-network keeps nginx off the host's
# port 80). berth-bench.target and a readiness unit are bind-mounted in
# read-only: the target wants nginx.service and berth-bench-ready.service,
# which runs After=/Requires=nginx.service and writes one line into a FIFO
# bind-mounted from the host. The host wakes on that line, then reads from the
# container's systemd (via nsenter) when nginx.service entered "active"
# (ActiveEnterTimestamp, µs) and when the container's systemd started
# (UserspaceTimestamp), so the times are systemd's own, not a poll's.
#
# Per run it reports
#   nginx active    start of systemd-nspawn -> nginx.service active
#   nspawn set-up   start of systemd-nspawn -> the container's systemd runs
#   systemd->nginx  the container's systemd starts -> nginx.service active
#   PSS             sum of Pss (smaps_rollup) of every process in the
#                   container's PID namespace, 1 s after nginx is active;
#                   plus systemd-nspawn's own (the supervisor)
#   poweroff        SIGTERM to systemd-nspawn (orderly halt) -> it exits
# and prints min / median / max over the runs. --strace adds one more boot
# under `strace -f -c -p` (attached to the launcher before it execs nspawn,
# following nspawn and every process of the container), detached when the
# host is woken: the syscall count of the boot alone.
#
# Every run's nspawn is started in a cgroup of its own
# (<hierarchy>/berth-bench/nspawn-<pid>), which is removed afterwards:
# with --keep-unit nspawn creates payload/ and supervisor/ below the cgroup it
# was started in. Needs root and systemd-container (strace for --strace).
set -euo pipefail

strace_run=0
if [ "${1:-}" = "--strace" ]; then strace_run=1; shift; fi
runs=${1:-5}
case $runs in '' | *[!0-9]* | 0) echo "usage: bench/nspawn-service.sh [--strace] [RUNS]" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
command -v systemd-nspawn >/dev/null || { echo "bench: systemd-nspawn missing (apt-get install systemd-container)" >&2; exit 1; }
if [ "$strace_run" = 1 ]; then command -v strace >/dev/null || { echo "bench: strace missing" >&2; exit 1; }; fi
img=${BERTH_BENCH_IMAGE:-$(bash "$here/images/debian.sh" | tail -n 1)}
[ -x "$img/usr/lib/systemd/systemd" ] || { echo "bench: $img is not a systemd image" >&2; exit 1; }

work=$(mktemp -d /tmp/berth-nspawn-bench-XXXXXX)
cgname=berth-bench/nspawn-$$
# The cgroup hierarchies nspawn tracks its container in: the unified one
# (hybrid: /sys/fs/cgroup/unified) and, on a hybrid or legacy host, name=systemd.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    hier=(/sys/fs/cgroup)
else
    hier=()
    for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do [ -d "$h" ] && hier+=("$h"); done
fi
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    local h
    for h in "${hier[@]}"; do
        [ -d "$h/$cgname" ] && find "$h/$cgname" -depth -type d -exec rmdir {} + 2>/dev/null || true
        rmdir "$h/berth-bench" 2>/dev/null || true
    done
    [ -n "${BERTH_BENCH_KEEP:-}" ] && echo "bench: kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/units" "$work/ready"
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

# now_us: realtime in µs, no fork (bash 5 $EPOCHREALTIME).
now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
# in_ct LEADER CMD...: run CMD in every namespace of the container.
in_ct() { local l=$1; shift; nsenter -t "$l" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
# ts_us LEADER PROPERTY [UNIT]: a systemd timestamp property in µs since the epoch.
ts_us() {
    local v
    v=$(in_ct "$1" systemctl show --timestamp=us+utc -p "$2" --value ${3:+"$3"})
    [ -n "$v" ] || { echo "bench: $2 ${3:-} is empty" >&2; return 1; }
    date -u -d "${v#* }" +%s%6N
}
# measure_pss LEADER: sets pss (KiB, summed Pss of every process in the
# leader's PID namespace), nprocs and procs (their names).
measure_pss() {
    local ns p v
    ns=$(readlink "/proc/$1/ns/pid")
    pss=0 nprocs=0 procs=
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] || continue
        v=$(awk '/^Pss:/ { print $2 }' "$p/smaps_rollup" 2>/dev/null) || continue
        pss=$((pss + ${v:-0})) nprocs=$((nprocs + 1))
        procs+="${procs:+ }$(cat "$p/comm" 2>/dev/null)"
    done
}

# boot MODE: one boot; MODE=plain or strace. Sets globals of the run.
boot() {
    local mode=$1 fifo=$work/ready/ready line leader h
    rm -f "$fifo"; mkfifo "$fifo"
    exec 3<> "$fifo"
    for h in "${hier[@]}"; do mkdir -p "$h/$cgname"; done
    t0=$(now_us)
    (
        for h in "${hier[@]}"; do echo "$BASHPID" > "$h/$cgname/cgroup.procs"; done
        # --strace: wait to be attached (strace -p); strace running the
        # command itself cannot be detached with its -c summary written.
        [ "$mode" = strace ] && kill -STOP "$BASHPID"
        exec systemd-nspawn -q -b --register=no --keep-unit --volatile=overlay \
            --private-network --link-journal=no --console=pipe -M "bench-$$" -D "$img" \
            --bind-ro="$work/units/berth-bench.target:/etc/systemd/system/berth-bench.target" \
            --bind-ro="$work/units/berth-bench-ready.service:/etc/systemd/system/berth-bench-ready.service" \
            --bind="$work/ready:/run/berth-bench" \
            systemd.unit=berth-bench.target < /dev/null > "$work/console.log" 2>&1
    ) &
    nspawn_pid=$!
    local strace_pid= i
    if [ "$mode" = strace ]; then
        for i in $(seq 1 100); do grep -q '^State:[[:space:]]*T' "/proc/$nspawn_pid/status" && break; sleep 0.02; done
        strace -f -c -o "$work/strace.txt" -p "$nspawn_pid" 2>/dev/null &
        strace_pid=$!
        for i in $(seq 1 250); do grep -q '^TracerPid:[[:space:]]*[1-9]' "/proc/$nspawn_pid/status" && break; sleep 0.02; done
        t0=$(now_us)
        kill -CONT "$nspawn_pid"
    fi
    if ! read -r -t 120 -u 3 line; then
        echo "bench: nginx.service not active within 120 s; console:" >&2
        cat "$work/console.log" >&2
        exit 1
    fi
    t_ready=$(now_us)
    exec 3<&-
    if [ -n "$strace_pid" ]; then
        # SIGTERM: strace detaches from every process and writes the summary.
        kill -TERM "$strace_pid"
        wait "$strace_pid" 2>/dev/null || true
    fi
    # The leader (the container's PID 1) is systemd-nspawn's child.
    sup=$nspawn_pid
    leader=$(pgrep -P "$sup" | head -n 1)
    [ -n "$leader" ] || { echo "bench: no container leader below pid $sup" >&2; exit 1; }
    t_active=$(ts_us "$leader" ActiveEnterTimestamp nginx.service)
    t_systemd=$(ts_us "$leader" UserspaceTimestamp)
    [ "$(in_ct "$leader" systemctl is-active nginx.service)" = active ] \
        || { echo "bench: nginx.service is not active" >&2; exit 1; }
    in_ct "$leader" curl -fsS -o /dev/null http://127.0.0.1/ \
        || { echo "bench: nginx does not answer on the container's loopback" >&2; exit 1; }
    sleep 1
    measure_pss "$leader"
    pss_sup=$(awk '/^Pss:/ { print $2 }' "/proc/$sup/smaps_rollup")
    units=$(in_ct "$leader" systemctl list-units --state=active --no-legend --plain | wc -l)
    t_stop=$(now_us)
    kill -TERM "$sup"
    for i in $(seq 1 300); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$sup" 2>/dev/null; then
        echo "bench: container did not power off within 30 s; killing it" >&2
        kill -KILL "$sup"
    fi
    wait "$nspawn_pid" 2>/dev/null || true
    while kill -0 "$sup" 2>/dev/null; do sleep 0.05; done
    t_off=$(now_us)
    nspawn_pid=
    for h in "${hier[@]}"; do find "$h/$cgname" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
}

ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }
stats() { # min median max of the arguments
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%10s | %10s | %10s", v[1], m, v[NR] }'
}

echo "bench/nspawn-service.sh: $runs runs; image $img ($(du -sh "$img" | cut -f1)); $(systemd-nspawn --version | head -n 1); $(nproc) CPUs; kernel $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F)"
declare -a a_active a_setup a_sd a_pss a_sup a_off a_ready
for r in $(seq 1 "$runs"); do
    boot plain
    a_active+=("$(ms "$t0" "$t_active")")
    a_setup+=("$(ms "$t0" "$t_systemd")")
    a_sd+=("$(ms "$t_systemd" "$t_active")")
    a_ready+=("$(ms "$t0" "$t_ready")")
    a_pss+=("$(awk -v k="$pss" 'BEGIN { printf "%.1f", k / 1024 }')")
    a_sup+=("$(awk -v k="$pss_sup" 'BEGIN { printf "%.1f", k / 1024 }')")
    a_off+=("$(ms "$t_stop" "$t_off")")
    echo "run $r: nginx active ${a_active[-1]} ms (nspawn set-up ${a_setup[-1]}, systemd->nginx ${a_sd[-1]}, host woken ${a_ready[-1]}), PSS ${a_pss[-1]} MiB in $nprocs processes, poweroff ${a_off[-1]} ms" >&2
done

printf '\n| %-38s | %10s | %10s | %10s |\n' metric min median max
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 40))" ------------ ------------ ------------
row() { local name=$1; shift; printf '| %-38s | %s |\n' "$name" "$(stats "$@")"; }
row "start -> nginx.service active, ms" "${a_active[@]}"
row "  start -> container systemd, ms" "${a_setup[@]}"
row "  container systemd -> nginx, ms" "${a_sd[@]}"
row "start -> host woken by FIFO, ms" "${a_ready[@]}"
row "PSS of the container's processes, MiB" "${a_pss[@]}"
row "PSS of systemd-nspawn, MiB" "${a_sup[@]}"
row "poweroff (SIGTERM -> exit), ms" "${a_off[@]}"
echo "(last run: $nprocs processes in the container: $procs; $units units active)"

if [ "$strace_run" = 1 ]; then
    boot strace
    # "% time  seconds  usecs/call  calls  [errors]  syscall"
    total=$(awk '$NF == "total" { print $4 }' "$work/strace.txt")
    errs=$(awk '$NF == "total" && NF == 6 { print $5 }' "$work/strace.txt")
    echo
    echo "strace -f -c of one boot up to nginx.service active (nspawn + container): $total syscalls${errs:+, $errs failed}; nginx active after $(ms "$t0" "$t_active") ms under strace"
    echo "top 10:"
    awk '/^-/ { s++; next } s == 1 && NF >= 5 { print }' "$work/strace.txt" | sort -k4 -n -r | head -n 10
fi
