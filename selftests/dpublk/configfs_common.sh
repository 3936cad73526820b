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
	_world_fresh=0 # a cached world state of the bad-input test is stale now
	echo "$2" >"$1" 2>"$TEST_TMP/cfs.err" || fail "write '$2' to ${1#$DPUBLK_CFS/} failed: $(cat "$TEST_TMP/cfs.err")"
}

# cfs_write_busy PATH VALUE: cfs_write for writes that take a disk away
# (`enable` 0, `expose` 0): udev probes a new disk for a moment after it
# appears, and while it has it open the write is refused with EBUSY; this
# retries for up to 5 s.
cfs_write_busy() {
	local i
	_world_fresh=0
	for i in $(seq 1 50); do
		echo "$2" >"$1" 2>"$TEST_TMP/cfs.err" && return 0
		grep -q "Device or resource busy" "$TEST_TMP/cfs.err" || break
		sleep 0.1
	done
	fail "write '$2' to ${1#$DPUBLK_CFS/} failed: $(cat "$TEST_TMP/cfs.err")"
}

# ssd_serial N: the serial number of SSD N as the nvme driver shows it,
# without the NVMe padding spaces (configfs refuses trailing spaces).
ssd_serial() {
	sed 's/ *$//' /sys/bus/pci/devices/"$(ssd_pci "$1")"/nvme/nvme*/serial 2>/dev/null | head -1
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
	cfs_write_busy "$v/enable" 0
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

# object_state DIR: every readable attribute of a configfs object, one
# "name: value" line each (lines of a multi-line value joined with '|'),
# and its subdirectories. Skips the write-only key, and the read counters
# of stats (reading a neighbouring volume's data changes them). Builtins
# only: the bad-input test calls it for every case, and a fork costs
# milliseconds under TCG.
object_state() {
	local f lines line kept sub IFS='|'
	for f in "$1"/*; do
		[ -e "$f" ] || continue # an empty directory
		if [ -d "$f" ]; then
			sub=("$f"/*)
			[ -e "${sub[0]}" ] || sub=()
			echo "${f##*/}/: ${sub[*]##*/}"
			continue
		fi
		[ "${f##*/}" = key ] && continue
		if ! mapfile -t lines <"$f" 2>/dev/null; then
			echo "${f##*/}: <read failed>"
			continue
		fi
		if [ "${f##*/}" = stats ]; then
			kept=()
			for line in "${lines[@]}"; do
				[[ $line == read_* || $line == media_read_* ]] || kept+=("$line")
			done
			lines=("${kept[@]}")
		fi
		echo "${f##*/}: ${lines[*]}"
	done
}

# disks_state: every dpublk disk with its size and read-only flag.
disks_state() {
	local d size ro
	for d in /sys/block/dpublk*; do
		[ -e "$d" ] || continue
		read -r size <"$d/size"
		read -r ro <"$d/ro"
		echo "${d##*/} size=$size ro=$ro"
	done
}

# tree_state: the configfs directories, the accelerator's volume list
# and the disks (builtins only, as object_state).
tree_state() {
	local d lines
	echo "== directories"
	for d in "$DPUBLK_CFS"/ssds/*/ "$DPUBLK_CFS"/volumes/*/ "$DPUBLK_CFS"/volumes/*/snapshots/*/; do
		[ -d "$d" ] && echo "${d#"$DPUBLK_CFS"/}"
	done
	echo "== volume_list"
	mapfile -t lines <"$DPUBLK_CFS/volume_list" || echo "<read failed>"
	printf '%s\n' "${lines[@]}"
	echo "== disks"
	disks_state
}

# cfs_consistent: every volume handle agrees with the accelerator: a
# handle's nsid is the one volume_list shows for its name (0 and absent
# for a volume the accelerator does not have), its device is a disk that
# exists, its snapshot handles are in its snapshot_list, and every disk
# belongs to an enabled volume, an adopted one, or an exposed snapshot.
# Prints what disagrees; returns 1 if anything does.
cfs_consistent() {
	local v name nsid dev listed state s bad=0 owned=" " d
	declare -A list_nsid
	while read -r name nsid _ state _; do
		list_nsid[$name]=$nsid
	done <"$DPUBLK_CFS/volume_list"
	for v in "$DPUBLK_CFS"/volumes/*/; do
		[ -d "$v" ] || continue
		v=${v%/}
		name=${v##*/}
		read -r nsid <"$v/nsid"
		read -r state <"$v/state"
		listed=${list_nsid[$name]-none}
		if [ "$listed" = none ]; then
			[ "$nsid" = 0 ] && [ "$state" = absent ] ||
				{ echo "volumes/$name: nsid $nsid, state $state, but the accelerator has no such volume"; bad=1; }
		elif [ "$listed" != "$nsid" ]; then
			echo "volumes/$name: nsid $nsid, the accelerator says $listed"
			bad=1
		fi
		read -r dev <"$v/device" || dev=
		if [ -n "$dev" ]; then
			[ -e "/sys/block/$dev" ] || { echo "volumes/$name: device $dev does not exist"; bad=1; }
			owned+="$dev "
		fi
		for s in "$v"/snapshots/*/; do
			[ -d "$s" ] || continue
			s=${s%/}
			local id on sdev
			read -r id <"$s/id"
			if [ "$id" != -1 ] && ! grep -qx "${s##*/} $id" "$v/snapshot_list"; then
				echo "volumes/$name/snapshots/${s##*/}: id $id, not in the accelerator's list: $(tr '\n' ' ' <"$v/snapshot_list")"
				bad=1
			fi
			read -r on sdev <"$s/expose"
			if [ "$on" = 1 ]; then
				[ "$(cat "/sys/block/$sdev/ro" 2>/dev/null)" = 1 ] ||
					{ echo "volumes/$name/snapshots/${s##*/}: exposed as $sdev, which is missing or writable"; bad=1; }
				owned+="$sdev "
			fi
		done
	done
	for d in /sys/block/dpublk*; do
		[ -e "$d" ] || continue
		[[ "$owned" == *" ${d##*/} "* ]] || { echo "disk ${d##*/} belongs to no volume or snapshot handle"; bad=1; }
	done
	return $bad
}
