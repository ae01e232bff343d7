#!/usr/bin/env bash
# Network benchmark: TCP throughput (iperf3, host -> pod, 1 stream) and
# round-trip latency (ICMP echo, host -> pod) for
#   baseline  a bare veth pair into a network namespace (no bridge, no NAT)
#   ns        berth run --stage1=ns --net private (veth + berth's bridge)
#   kvm       berth run --stage1=kvm --net private (tap + virtio-net)
# in one run, printed as one table.
#
#   bench/net.sh [SECONDS]    (iperf3 duration per case, default 5)
#
# Uses BERTH=path/to/berth or the installed berth; needs root, iperf3, ping.
# iperf3 runs inside the pod from the host's /usr (bind-mounted read-only at
# /host-usr, started through the host's dynamic loader), so the busybox image
# is enough.
# Latency is `ping -c 200 -i 0.005` (average RTT): ICMP is answered by the
# pod's kernel, so it measures the datapath (veth/bridge or tap/virtio-net),
# not an application's scheduling. Traffic stays on the machine: a bridge
# and subnet of the benchmark's own (198.18.254.0/24), removed afterwards.
set -euo pipefail
secs=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
berth=${BERTH:-$(command -v berth || echo "$here/target/release/berth")}
[ -x "$berth" ] || { echo "bench: berth not found (run make setup)" >&2; exit 1; }
for t in iperf3 ping jq ip; do command -v $t >/dev/null || { echo "bench: $t missing (run make setup)" >&2; exit 1; }; done
img=$(bash "$here/images/busybox.sh")
work=$(mktemp -d /tmp/berth-netbench-XXXXXX)
ns=berth-netbench-$$
cleanup() {
    "$berth" --root "$work/root" rm -f nb-ns >/dev/null 2>&1 || true
    "$berth" --root "$work/root" rm -f nb-kvm >/dev/null 2>&1 || true
    ip netns del "$ns" 2>/dev/null || true
    ip link del bnb$$ 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/root"
cat > "$work/root/berth.toml" <<TOML
[network]
bridge = "bnbench0"
subnet = "198.18.254.0/24"
nft_table = "berth_netbench"
dns = []
TOML

h=/host-usr
iperf_in_pod="$h/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path $h/lib/x86_64-linux-gnu $h/bin/iperf3"

# client_to ADDR -> "Mbit/s avg_rtt_ms"
client_to() {
    local addr=$1 mbps rtt
    # Wait for the server (a kvm guest loads iperf3 over virtio-fs: seconds).
    for _ in $(seq 600); do iperf3 -c "$addr" -t 1 -J >/dev/null 2>&1 && break; sleep 0.1; done
    # iperf3 serves one test at a time: a slow (kvm) server may still be
    # finishing the probe above and answer "busy"; try again.
    for _ in $(seq 20); do
        mbps=$(iperf3 -c "$addr" -t "$secs" -J | jq '.end.sum_received.bits_per_second // empty | . / 1e6')
        [ -n "$mbps" ] && break
        sleep 1
    done
    [ -n "$mbps" ] || { echo "bench: iperf3 to $addr failed" >&2; exit 1; }
    rtt=$(ping -c 200 -i 0.005 -q "$addr" | awk -F/ '/^rtt|^round-trip/ {print $5}')
    printf '%.1f %.3f\n' "$mbps" "$rtt"
}

# baseline: veth pair, host 198.18.253.1/30 <-> netns 198.18.253.2/30
ip netns add "$ns"
ip link add bnb$$ type veth peer name eth0 netns "$ns"
ip addr add 198.18.253.1/30 dev bnb$$; ip link set bnb$$ up
ip -n "$ns" addr add 198.18.253.2/30 dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
ip netns exec "$ns" iperf3 -s -D -I "$work/iperf-base.pid"
read -r base_bw base_rtt < <(client_to 198.18.253.2)
kill "$(cat "$work/iperf-base.pid")" 2>/dev/null || true

# ns stage1
"$berth" --root "$work/root" run -d --name nb-ns --stage1=ns --rootfs "$img" \
    -v /usr:$h:ro -- sh -c "exec $iperf_in_pod -s" >/dev/null
addr=$("$berth" --root "$work/root" inspect nb-ns --format json | jq -r .address)
read -r ns_bw ns_rtt < <(client_to "$addr")
"$berth" --root "$work/root" rm -f nb-ns >/dev/null

# kvm stage1: tap on the bridge + virtio-net, iperf3 from the host's /usr
# over virtio-fs.
if [ -e /dev/kvm ]; then
    "$berth" --root "$work/root" run -d --name nb-kvm --stage1=kvm --rootfs "$img" \
        -v /usr:$h:ro -- sh -c "exec $iperf_in_pod -s" >/dev/null
    addr=$("$berth" --root "$work/root" inspect nb-kvm --format json | jq -r .address)
    read -r kvm_bw kvm_rtt < <(client_to "$addr")
    "$berth" --root "$work/root" rm -f nb-kvm >/dev/null
else
    kvm_bw="n/a (no /dev/kvm)"; kvm_rtt="n/a (no /dev/kvm)"
fi

echo "bench/net.sh: host -> pod, iperf3 ${secs}s 1 TCP stream, ping -c 200 -i 0.005; $(nproc) CPUs; kernel $(uname -r); $(date -u +%F)"
printf '\n| %-22s | %14s | %14s | %22s |\n' "" "veth baseline" "ns (berth)" "kvm (berth)"
printf '|-%-22s-|-%14s-|-%14s-|-%22s-|\n' "----------------------" "--------------" "--------------" "----------------------"
printf '| %-22s | %14s | %14s | %22s |\n' "TCP throughput Mbit/s" "$base_bw" "$ns_bw" "$kvm_bw"
printf '| %-22s | %14s | %14s | %22s |\n' "RTT avg ms" "$base_rtt" "$ns_rtt" "$kvm_rtt"
