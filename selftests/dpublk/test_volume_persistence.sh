#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Volumes live on the accelerator's SSDs: they survive a module reload and a
# restart of dpuemu (kill -9 after a flush), with their data, snapshots and
# encryption. Two VM runs over the same images, driven by
# scripts/persistence-test.sh:
#   DPUBLK_PERSIST_PHASE=create  create, write, flush, reload, kill -9
#   DPUBLK_PERSIST_PHASE=verify  (dpuemu restarted) adopt and compare
# Checksums travel from run 1 to run 2 in $DPUBLK_IMAGES_DIR.
# A third volume, ps, gets DPUBLK_PERSIST_SNAPSHOTS (100) snapshots, each
# after a 4 KiB marker write, so every snapshot's content is distinct: run 2
# exposes each and compares it with its checksum from run 1 (a snapshot
# lost and made anew by the mkdir that adopts it would hold the newest
# markers and fail).
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

[ -n "${DPUBLK_PERSIST_PHASE:-}" ] || skip "run by scripts/persistence-test.sh (two VM runs)"
state=$DPUBLK_IMAGES_DIR
[ -d "$state" ] || fail "no images directory"
V=$DPUBLK_CFS/volumes
KEY=$(printf '3%.0s' $(seq 1 64))$(printf 'c%.0s' $(seq 1 64))
WRONG=$(printf '4%.0s' $(seq 1 64))$(printf 'c%.0s' $(seq 1 64))
sum() { dd if="$1" bs=1M count="${2:-32}" iflag=direct status=none | sha256sum | cut -d' ' -f1; }
dev_of() { echo "/dev/$(cat "$V/$1/device")"; }
snapshots=${DPUBLK_PERSIST_SNAPSHOTS:-100}
[[ $snapshots =~ ^[1-9][0-9]*$ ]] && [ "$snapshots" -le 1000 ] || fail "DPUBLK_PERSIST_SNAPSHOTS must be 1..1000"
# The span of ps the markers cover: block 0, markers at blocks 1..N+1.
marker_sum() { dd if="$1" bs=4k count=$((snapshots + 2)) iflag=direct status=none | sha256sum | cut -d' ' -f1; }
marker() { printf 'snapshot marker %08d\n' "$1" | dd of="$2" bs=4k seek="$1" conv=sync,fsync oflag=direct status=none; }

unload_dpublk
load_dpublk_management
dmesg_mark
case $DPUBLK_PERSIST_PHASE in
create)
	attach_ssd s0 0
	attach_ssd s1 1
	attach_ssd s2 2
	attach_ssd s4 4
	pv=$(make_volume pv s0,s1 stripe 128M)
	head -c 32M /dev/urandom >"$TEST_TMP/a"
	dd if="$TEST_TMP/a" of="$pv" bs=1M oflag=direct conv=fsync status=none || fail "write pv"
	sum "$pv" >"$state/pv.snap.sum"
	mkdir "$V/pv/snapshots/snap" || fail "snapshot"
	head -c 8M /dev/urandom | dd of="$pv" bs=1M seek=4 oflag=direct conv=fsync status=none || fail "overwrite pv"
	sum "$pv" >"$state/pv.sum"
	[ "$(cat "$state/pv.sum")" != "$(cat "$state/pv.snap.sum")" ] || fail "overwrite changed nothing"
	ps=$(make_volume ps s4 linear 64M)
	[ -b "$ps" ] || fail "volume ps: ${ps:-no device}"
	for i in $(seq 1 "$snapshots"); do
		marker "$i" "$ps" || fail "marker $i"
		mkdir "$V/ps/snapshots/s$i" || fail "snapshot s$i of ps"
		marker_sum "$ps" >"$state/ps.s$i.sum"
	done
	# One more marker: the volume now differs from its newest snapshot too.
	marker $((snapshots + 1)) "$ps" || fail "last marker"
	marker_sum "$ps" >"$state/ps.sum"
	diag "ps: $snapshots snapshots, each after its own marker"
	pe=$(make_volume pe s2 linear 64M encryption=aes-xts-256 key="$KEY" compression=lz4 dedup=1)
	head -c 32M /dev/urandom | dd of="$pe" bs=1M oflag=direct conv=fsync status=none || fail "write pe"
	sum "$pe" >"$state/pe.sum"
	# A module reload: handles go, volumes stay, and come back as disks.
	cfs_write "$V/pv/enable" 0
	cfs_write "$V/pe/enable" 0
	cfs_write "$V/ps/enable" 0
	for i in $(seq 1 "$snapshots"); do rmdir "$V/ps/snapshots/s$i" || fail "rmdir snapshot handle s$i"; done
	rmdir "$V/ps" || fail "rmdir of ps's handle"
	rmdir "$V/pv/snapshots/snap" "$V/pv" "$V/pe" || fail "rmdir of disabled handles"
	for s in s0 s1 s2 s4; do rmdir "$DPUBLK_CFS/ssds/$s" || fail "rmdir ssds/$s"; done
	unload_dpublk
	load_dpublk_management
	mkdir "$V/pv" "$V/pe" "$V/ps" || fail "mkdir to adopt"
	[ "$(cat "$V/pv/enable")" = 1 ] || fail "pv not exposed after reload"
	[ "$(marker_sum "$(dev_of ps)")" = "$(cat "$state/ps.sum")" ] || fail "ps data changed across reload"
	[ "$(sum "$(dev_of pv)")" = "$(cat "$state/pv.sum")" ] || fail "pv data changed across reload"
	[ "$(sum "$(dev_of pe)" 32)" = "$(cat "$state/pe.sum")" ] || fail "pe data changed across reload"
	[ "$(cat "$V/pv/layout")" = stripe ] || fail "adopted layout $(cat "$V/pv/layout")"
	diag "volumes back after a module reload with their data"
	echo created >"$state/phase1"
	sync
	# A crash of the accelerator after the flushes: QEMU may go down with it.
	host_request dpuemu-kill >/dev/null
	exit $KSFT_PASS
	;;
verify)
	grep -q created "$state/phase1" || fail "run 1 did not complete"
	for i in $(seq 1 50); do [ -b /dev/dpublk0 ] && break; sleep 0.1; done
	mkdir "$V/pv" "$V/pe" || fail "mkdir to adopt"
	[ "$(cat "$V/pv/enable")" = 1 ] || fail "pv not exposed after the restart"
	[ "$(sum "$(dev_of pv)")" = "$(cat "$state/pv.sum")" ] || fail "pv data lost across the restart"
	# The snapshot is back by name; a clone of it shows the old content.
	mkdir "$V/pv/snapshots/snap" || fail "adopt the snapshot"
	cfs_write "$V/pv/snapshots/snap/clone" pvclone
	mkdir "$V/pvclone" || fail "adopt the clone"
	[ "$(sum "$(dev_of pvclone)")" = "$(cat "$state/pv.snap.sum")" ] || fail "snapshot content changed across the restart"
	# Every snapshot of ps is back by name with its own content.
	mkdir "$V/ps" || fail "adopt ps"
	[ "$(marker_sum "$(dev_of ps)")" = "$(cat "$state/ps.sum")" ] || fail "ps data lost across the restart"
	for i in $(seq 1 "$snapshots"); do
		snap=$V/ps/snapshots/s$i
		mkdir "$snap" || fail "adopt snapshot s$i"
		cfs_write "$snap/expose" 1
		disk=$(cat "$snap/expose")
		disk=/dev/${disk#1 }
		for _ in $(seq 1 50); do [ -b "$disk" ] && break; sleep 0.1; done
		[ "$(marker_sum "$disk")" = "$(cat "$state/ps.s$i.sum")" ] ||
			fail "snapshot s$i of ps does not hold what it held before the restart"
		cfs_write "$snap/expose" 0
	done
	diag "ps: all $snapshots snapshots back with their content"
	# The encrypted volume is locked until its key comes; a wrong key is refused.
	[ "$(cat "$V/pe/state")" = locked ] || fail "pe is $(cat "$V/pe/state"), expected locked"
	cfs_write "$V/pe/key" "$WRONG"
	echo 1 >"$V/pe/enable" 2>"$TEST_TMP/err" && fail "a wrong key opened the volume"
	grep -q "Key was rejected" "$TEST_TMP/err" || fail "wrong key: $(cat "$TEST_TMP/err")"
	cfs_write "$V/pe/key" "$KEY"
	cfs_write "$V/pe/enable" 1
	[ "$(sum "$(dev_of pe)" 32)" = "$(cat "$state/pe.sum")" ] || fail "pe data lost across the restart"
	# The SSDs came back attached to the accelerator.
	mkdir "$DPUBLK_CFS/ssds/s0" && cfs_write "$DPUBLK_CFS/ssds/s0/device" "$(ssd_pci 0)"
	[ "$(cat "$DPUBLK_CFS/ssds/s0/state")" = attached ] || fail "SSD 0 not attached after the restart"
	diag "after kill -9 and restart: volumes, snapshot, clone and encrypted volume back with their data"
	;;
*) fail "unknown DPUBLK_PERSIST_PHASE '$DPUBLK_PERSIST_PHASE'" ;;
esac
dmesg_check_clean
exit $KSFT_PASS
