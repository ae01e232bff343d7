#!/bin/sh
# Real-guest virtio-net smoke test (root): boots the guest kernel with a busybox
# initramfs whose /init configures eth0 and pings the host end of a tap.
# Everything happens in an anonymous network namespace (`unshare --net`) that
# disappears with this script, tap included; no host interface is touched.
#
#   vmm/examples/net_smoke.sh [VMLINUX] [BUSYBOX_ROOTFS_DIR]
# Needs the boot example built: cargo build -p vmm --example boot
set -eu
KERNEL=${1:-/usr/local/lib/berth/vmlinux}
ROOTFS=${2:-$(ls -d /var/cache/berth/images/busybox-* | head -n1)}
BOOT=${CARGO_TARGET_DIR:-target}/debug/examples/boot
WORK=$(mktemp -d /tmp/berth-net-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp -a "$ROOTFS" "$WORK/root"
rm -f "$WORK/root/init"
cat > "$WORK/root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
ip link set lo up
ip link set eth0 up
ip addr add 10.201.0.2/24 dev eth0
echo "VNET-MAC $(cat /sys/class/net/eth0/address)"
if ping -c 3 -W 5 10.201.0.1; then echo VNET-PING-OK; else echo VNET-PING-FAIL; fi
reboot -f
INIT
chmod +x "$WORK/root/init"
(cd "$WORK/root" && find . | cpio -o -H newc --quiet) > "$WORK/initramfs.cpio"
unshare --net sh -eu -c '
ip link set lo up
ip tuntap add dev bvtap0 mode tap vnet_hdr
ip addr add 10.201.0.1/24 dev bvtap0
ip link set bvtap0 up
"$0" --kernel "$1" --initramfs "$2" --net bvtap0 --timeout 300
' "$BOOT" "$KERNEL" "$WORK/initramfs.cpio" | tee "$WORK/console.log"
grep -q VNET-PING-OK "$WORK/console.log"
