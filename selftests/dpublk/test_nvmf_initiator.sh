#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dpuemu's NVMe/TCP initiator against Linux's nvmet-tcp target: nvmet
# (configured through its configfs in the guest) exports an image file on
# 127.0.0.1:4421; dpuemu, in appliance mode, takes that namespace as its
# own through its initiator and serves it on 127.0.0.1:4420; Linux's
# nvme-tcp host connects to dpuemu and fio verify passes, and a pattern
# written through the chain is found byte for byte in nvmet's image.
# dpublk-timeout: 600
. "$(dirname "$0")/test_common.sh"

DPUEMU=${DPUBLK_DPUEMU:-$DPUBLK_TOP/target/release/dpuemu}
[ -x "$DPUEMU" ] || fail "dpuemu is not built: $DPUEMU"
command -v nvme >/dev/null || fail "nvme-cli is not installed in the VM"
for m in nvmet nvmet-tcp nvme-tcp; do modprobe "$m" || fail "cannot load $m"; done
ip link set lo up || fail "cannot bring up the loopback interface"
ensure_configfs
NVMET=$CONFIGFS/nvmet
[ -d "$NVMET" ] || fail "no nvmet configfs at $NVMET"

BACKEND=nqn.2026-12.org.linux:nvmet-backend
GATEWAY=nqn.2026-12.org.dpublk:nvmf-gateway
HOSTID=6c0b1f3e-5a43-4d2e-9d67-0000000000c3
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$HOSTID
# nvmet takes a file namespace's block size from its file system: the
# guest's /tmp is an overlay that reports none, a tmpfs reports 4 KiB.
mkdir "$TEST_TMP/backend"
mount -t tmpfs -o size=160M nvmf-backend "$TEST_TMP/backend" || fail "cannot mount a tmpfs"
on_exit 'umount "$TEST_TMP/backend"'
IMAGE=$TEST_TMP/backend/backend.img
LOG=$TEST_TMP/dpuemu.log
truncate -s 128M "$IMAGE"

# nvmet: one subsystem with the image as namespace 1, on port 2.
nvmet_down() {
	rm -f "$NVMET/ports/2/subsystems/$BACKEND"
	[ -d "$NVMET/subsystems/$BACKEND/namespaces/1" ] &&
		{ echo 0 >"$NVMET/subsystems/$BACKEND/namespaces/1/enable"; rmdir "$NVMET/subsystems/$BACKEND/namespaces/1"; }
	rmdir "$NVMET/subsystems/$BACKEND" "$NVMET/ports/2" 2>/dev/null
}
on_exit nvmet_down
mkdir "$NVMET/subsystems/$BACKEND" || fail "cannot create the nvmet subsystem"
echo 1 >"$NVMET/subsystems/$BACKEND/attr_allow_any_host"
mkdir "$NVMET/subsystems/$BACKEND/namespaces/1"
echo "$IMAGE" >"$NVMET/subsystems/$BACKEND/namespaces/1/device_path"
echo 1 >"$NVMET/subsystems/$BACKEND/namespaces/1/buffered_io"
echo 1 >"$NVMET/subsystems/$BACKEND/namespaces/1/enable" || fail "cannot enable the nvmet namespace"
mkdir "$NVMET/ports/2"
echo tcp >"$NVMET/ports/2/addr_trtype"
echo ipv4 >"$NVMET/ports/2/addr_adrfam"
echo 127.0.0.1 >"$NVMET/ports/2/addr_traddr"
echo 4421 >"$NVMET/ports/2/addr_trsvcid"
ln -s "$NVMET/subsystems/$BACKEND" "$NVMET/ports/2/subsystems/$BACKEND" || fail "cannot expose the nvmet port"

cat >"$TEST_TMP/nvmf.conf" <<CONF
[port 1]
address 127.0.0.1
service 4420

[subsystem $GATEWAY]
ports 1
host $HOSTNQN
namespace 1 remote 127.0.0.1:4421 $BACKEND 1
CONF
dmesg_mark
setsid "$DPUEMU" --socket-dir "$TEST_TMP/sockets" --nvmf-config "$TEST_TMP/nvmf.conf" >"$LOG" 2>&1 </dev/null &
target_pid=$!
on_exit 'kill -9 $target_pid 2>/dev/null; wait $target_pid 2>/dev/null'
on_exit 'nvme disconnect -n "$GATEWAY" >/dev/null 2>&1'
for _ in $(seq 1 100); do
	grep -q 'listening on' "$LOG" && break
	kill -0 "$target_pid" 2>/dev/null || break
	sleep 0.1
done
grep -q 'listening on' "$LOG" || { sed 's/^/#   /' "$LOG" | tail -20; fail "dpuemu did not start"; }
grep -q "nvmf initiator: $BACKEND namespace 1 at 127.0.0.1:4421" "$LOG" ||
	fail "dpuemu's initiator did not report the nvmet namespace"

nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$GATEWAY" --hostnqn="$HOSTNQN" --hostid="$HOSTID" >/dev/null ||
	fail "nvme connect to dpuemu failed"
dev=
for _ in $(seq 1 100); do
	for b in /sys/block/nvme*n1; do
		[ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$GATEWAY" ] && dev=/dev/$(basename "$b")
	done
	[ -n "$dev" ] && [ -b "$dev" ] && break
	sleep 0.1
done
[ -b "$dev" ] || fail "no block device for $GATEWAY"
size=$(blockdev --getsize64 "$dev")
[ "$size" = $((128 << 20)) ] || fail "$dev has $size bytes, nvmet's image 128 MiB"
diag "$dev: nvmet's namespace through dpuemu ($(blockdev --getss "$dev")-byte blocks)"

fio_verify "$dev" --bs=4k --iodepth=16 --size=16M --offset=0
fio_verify "$dev" --bs=128k --iodepth=8 --size=32M --offset=32M
head -c 1M /dev/urandom >"$TEST_TMP/pattern"
dd if="$TEST_TMP/pattern" of="$dev" bs=64k seek=$((100 << 4)) oflag=direct conv=fsync status=none || fail "dd to $dev"
cmp -s "$TEST_TMP/pattern" <(dd if="$IMAGE" bs=64k skip=$((100 << 4)) count=16 status=none) ||
	fail "nvmet's image does not hold what was written through dpuemu"
diag "a 1 MiB pattern reached nvmet's image through dpuemu's target and initiator"
nvme disconnect -n "$GATEWAY" >/dev/null || fail "nvme disconnect failed"
kill -0 "$target_pid" 2>/dev/null || fail "dpuemu died"
grep -q 'panicked' "$LOG" && fail "dpuemu panicked"
dmesg_check_clean
exit $KSFT_PASS
