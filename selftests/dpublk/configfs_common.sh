# SPDX-License-Identifier: GPL-2.0
# Helpers for the configfs management tests. Source after test_common.sh
# and dpublk_disk_common.sh.

DPUBLK_CFS=$CONFIGFS/dpublk

# ssd_pci_addresses: PCI addresses of the local SSD functions (1af4:10f1),
# in SSD index order (subsystem device ID 0x0100 + index).
ssd_pci_addresses() {
	local d
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x10f1 ] || continue
		echo "$(cat "$d/subsystem_device") $(basename "$d")"
	done | sort | awk '{ print $2 }'
}

# ssd_pci N: the PCI address of SSD N.
ssd_pci() { ssd_pci_addresses | sed -n "$(($1 + 1))p"; }

# ssd_driver BDF: the driver bound to the function, or "none".
ssd_driver() {
	local link=/sys/bus/pci/devices/$1/driver
	if [ -e "$link" ]; then basename "$(readlink "$link")"; else echo none; fi
}

# ssd_blockdev BDF: the nvme namespace block device of an SSD function.
ssd_blockdev() {
	local ns
	for ns in /sys/bus/pci/devices/$1/nvme/nvme*/nvme*n1; do
		[ -e "$ns" ] && { echo "/dev/$(basename "$ns")"; return 0; }
	done
	return 1
}

# wait_ssd_blockdev BDF: waits for the nvme driver to bind and show a disk.
wait_ssd_blockdev() {
	local i dev
	for i in $(seq 1 100); do
		dev=$(ssd_blockdev "$1") && [ -b "$dev" ] && { echo "$dev"; return 0; }
		sleep 0.1
	done
	return 1
}

# cfs_write PATH VALUE: writes VALUE, fails the test if the write fails.
cfs_write() {
	echo "$2" >"$1" 2>"$TEST_TMP/cfs.err" || fail "write '$2' to ${1#$DPUBLK_CFS/} failed: $(cat "$TEST_TMP/cfs.err")"
}

# attach_ssd NAME N: makes ssds/NAME for SSD N and attaches it.
attach_ssd() {
	local name=$1 index=$2 bdf
	bdf=$(ssd_pci "$index") || fail "no SSD $index"
	[ -n "$bdf" ] || fail "no SSD $index"
	mkdir "$DPUBLK_CFS/ssds/$name" || fail "mkdir ssds/$name"
	cfs_write "$DPUBLK_CFS/ssds/$name/device" "$bdf"
	cfs_write "$DPUBLK_CFS/ssds/$name/attach" 1
	[ "$(cat "$DPUBLK_CFS/ssds/$name/state")" = attached ] || fail "ssds/$name not attached"
	[ "$(ssd_driver "$bdf")" = none ] || fail "$bdf still bound to $(ssd_driver "$bdf") after attach"
}

# detach_ssd NAME: detaches ssds/NAME, checks nvme has the SSD again, and
# removes the handle.
detach_ssd() {
	local name=$1 bdf
	bdf=$(cat "$DPUBLK_CFS/ssds/$name/device")
	cfs_write "$DPUBLK_CFS/ssds/$name/attach" 0
	rmdir "$DPUBLK_CFS/ssds/$name" || fail "rmdir ssds/$name"
	wait_ssd_blockdev "$bdf" >/dev/null || fail "$bdf has no nvme disk after detach (driver: $(ssd_driver "$bdf"))"
}

# make_volume NAME SSDS LAYOUT SIZE [attr=value...]: creates and enables a
# volume; prints its block device.
make_volume() {
	local name=$1 ssds=$2 layout=$3 size=$4 kv
	shift 4
	local v=$DPUBLK_CFS/volumes/$name
	mkdir "$v" || fail "mkdir volumes/$name"
	cfs_write "$v/ssds" "$ssds"
	cfs_write "$v/layout" "$layout"
	cfs_write "$v/size" "$size"
	for kv in "$@"; do cfs_write "$v/${kv%%=*}" "${kv#*=}"; done
	cfs_write "$v/enable" 1
	local dev
	dev=$(cat "$v/device")
	[ -n "$dev" ] || fail "volumes/$name enabled but has no device"
	local i
	for i in $(seq 1 50); do [ -b "/dev/$dev" ] && break; sleep 0.1; done
	[ -b "/dev/$dev" ] || fail "/dev/$dev missing"
	echo "/dev/$dev"
}

# remove_volume NAME: disables, destroys and forgets a volume.
remove_volume() {
	local v=$DPUBLK_CFS/volumes/$1
	cfs_write "$v/enable" 0
	cfs_write "$v/destroy" 1
	rmdir "$v" || fail "rmdir volumes/$1"
}

# cleanup_tree: best-effort teardown of everything under dpublk/ (for
# on_exit hooks after a failure).
cleanup_tree() {
	local d s
	[ -d "$DPUBLK_CFS" ] || return 0
	# Snapshots first: a volume with snapshots cannot be destroyed.
	for s in "$DPUBLK_CFS"/volumes/*/snapshots/*/; do
		[ -d "$s" ] || continue
		echo 1 >"$s/destroy" 2>/dev/null
		rmdir "$s" 2>/dev/null
	done
	for d in "$DPUBLK_CFS"/volumes/*/; do
		[ -d "$d" ] || continue
		echo 0 >"$d/enable" 2>/dev/null
		echo 1 >"$d/destroy" 2>/dev/null
		rmdir "$d" 2>/dev/null
	done
	for d in "$DPUBLK_CFS"/ssds/*/; do
		[ -d "$d" ] || continue
		echo 0 >"$d/attach" 2>/dev/null
		rmdir "$d" 2>/dev/null
	done
	return 0
}

# load_dpublk_management: loads dpublk with the accelerator bound, no disks
# expected yet; skips without an accelerator.
load_dpublk_management() {
	accelerator_pci >/dev/null || skip "no accelerator function (run with --accelerator)"
	ensure_configfs
	load_dpublk
	local i
	for i in $(seq 1 100); do
		[ "$(basename "$(readlink "/sys/bus/pci/devices/$(accelerator_pci)/driver" 2>/dev/null)")" = dpublk ] && break
		sleep 0.1
	done
	[ -d "$DPUBLK_CFS/volumes" ] && [ -d "$DPUBLK_CFS/ssds" ] || fail "no ssds/ and volumes/ in configfs"
	on_exit cleanup_tree
}

# vol_stat NAME COUNTER: one counter of volumes/NAME/stats. Call it as
# x=$(vol_stat ...) || fail "..."; it complains on stderr.
vol_stat() {
	local value
	value=$(awk -v c="$2" '$1 == c { print $2 }' "$DPUBLK_CFS/volumes/$1/stats")
	[ -n "$value" ] || { echo "volumes/$1/stats has no $2" >&2; return 1; }
	echo "$value"
}

# expect_stat NAME COUNTER OP VALUE: fails the test unless the counter
# compares to VALUE with the test(1) operator OP (-eq, -ge, ...).
expect_stat() {
	local value
	value=$(vol_stat "$1" "$2") || fail "no $2 in volumes/$1/stats"
	[ "$value" "$3" "$4" ] || fail "volumes/$1: $2 is $value, expected $3 $4"
}

# disk_sum DEV [MIB]: MD5 of the first MIB MiB of a disk (all of it by
# default), read with O_DIRECT so the page cache cannot answer.
disk_sum() {
	local count=()
	[ -n "${2:-}" ] && count=(count="$2")
	dd if="$1" bs=1M "${count[@]}" iflag=direct status=none | md5sum | cut -d' ' -f1
}

# clone_snapshot VOLUME SNAP CLONE: clones volumes/VOLUME/snapshots/SNAP
# into a new volume CLONE, adopts it (mkdir volumes/CLONE) and prints its
# disk, which must be the one the driver logged for the clone. Call it as
# dev=$(clone_snapshot ...) || fail "$dev".
clone_snapshot() {
	local vol=$1 snap=$2 clone=$3 logged dev i
	echo "$clone" >"$DPUBLK_CFS/volumes/$vol/snapshots/$snap/clone" 2>"$TEST_TMP/cfs.err" ||
		{ echo "clone of $vol/$snap into $clone refused: $(cat "$TEST_TMP/cfs.err")"; return 1; }
	logged=$(dmesg | sed -n "s|.*volumes/$vol/snapshots/$snap: cloned into volume $clone (\(dpublk[0-9]*\))\$|\1|p" | tail -1)
	[ -n "$logged" ] || { echo "no 'cloned into volume $clone' in the kernel log"; return 1; }
	mkdir "$DPUBLK_CFS/volumes/$clone" || { echo "mkdir volumes/$clone (adopting the clone) failed"; return 1; }
	dev=$(cat "$DPUBLK_CFS/volumes/$clone/device")
	[ "$dev" = "$logged" ] || { echo "volumes/$clone/device is '$dev', the driver logged $logged"; return 1; }
	for i in $(seq 1 50); do [ -b "/dev/$dev" ] && break; sleep 0.1; done
	[ -b "/dev/$dev" ] || { echo "/dev/$dev missing"; return 1; }
	echo "/dev/$dev"
}
