#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The documented refusals on a locked encrypted volume, which only an
# accelerator restart makes (its key is kept nowhere). Two VM runs over the
# same images, driven by scripts/persistence-test.sh before
# test_volume_persistence (whose run 1 ends with kill -9 of dpuemu):
#   DPUBLK_PERSIST_PHASE=create  an encrypted volume on SSD 3 with a pattern
#   DPUBLK_PERSIST_PHASE=verify  it is locked: a snapshot of it gets ENOKEY,
#                                and so do destroy, scrub and changes; a
#                                wrong key gets EKEYREJECTED; each refusal
#                                changes nothing. The right key opens it
#                                with its data, and then snapshots work.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

[ -n "${DPUBLK_PERSIST_PHASE:-}" ] || skip "run by scripts/persistence-test.sh (two VM runs)"
state=${DPUBLK_IMAGES_DIR:-}
[ -d "$state" ] || fail "no images directory"
V=$DPUBLK_CFS/volumes
L=$V/locked
KEY=$(printf '5%.0s' $(seq 1 64))$(printf 'a%.0s' $(seq 1 64))
WRONG=$(printf '6%.0s' $(seq 1 64))$(printf 'a%.0s' $(seq 1 64))

unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 4 ] || skip "needs 4 SSD functions"
dmesg_mark
load_dpublk_management
case $DPUBLK_PERSIST_PHASE in
create)
	attach_ssd lk3 3
	dev=$(make_volume locked lk3 linear 64M encryption=aes-xts-256 key="$KEY")
	head -c 8M /dev/urandom | dd of="$dev" bs=1M oflag=direct conv=fsync status=none || fail "write locked"
	disk_sum "$dev" 8 >"$state/locked.sum"
	cfs_write_busy "$L/enable" 0
	# Handles go, the volume and its SSD stay with the accelerator.
	rmdir "$L" "$DPUBLK_CFS/ssds/lk3" || fail "rmdir of the handles"
	grep -q '^locked ' "$DPUBLK_CFS/volume_list" || fail "the accelerator does not list the volume"
	diag "encrypted volume 'locked' made on SSD 3; the accelerator restart will lock it"
	;;
verify)
	[ -s "$state/locked.sum" ] || fail "run 1 did not make the volume"
	mkdir "$L" || fail "mkdir volumes/locked (adopt)"
	[ "$(cat "$L/state")" = locked ] || fail "volumes/locked is $(cat "$L/state"), expected locked"
	[ "$(cat "$L/nsid")" = 0 ] || fail "a locked volume has namespace $(cat "$L/nsid")"
	declare -A MSG=([ENOKEY]="Required key not available" [EBUSY]="Device or resource busy"
		[EKEYREJECTED]="Key was rejected by service")
	cases=0
	# expect ERRNO OBJ WHAT COMMAND...: as in test_configfs_bad_input.
	expect() {
		local errno=$1 obj=$2 what=$3
		shift 3
		cases=$((cases + 1))
		{ object_state "$obj"; tree_state; } >"$TEST_TMP/before"
		"$@" 2>"$TEST_TMP/err" && fail "$what: succeeded, expected $errno"
		grep -q "${MSG[$errno]}" "$TEST_TMP/err" || fail "$what: expected $errno, got: $(cat "$TEST_TMP/err")"
		{ object_state "$obj"; tree_state; } >"$TEST_TMP/after"
		cmp -s "$TEST_TMP/before" "$TEST_TMP/after" ||
			{ diff "$TEST_TMP/before" "$TEST_TMP/after" | sed 's/^/#   /'; fail "$what: refused, but something changed"; }
		dmesg | tail -5 | grep -qE "(volumes|snapshots)/locked.*\\($errno\\)\$" || fail "$what: no refusal with ($errno) in the kernel log"
	}
	w() { printf '%s\n' "$2" >"$1"; }
	expect ENOKEY "$L/snapshots" "snapshot of a locked volume" mkdir "$L/snapshots/s"
	expect ENOKEY "$L" "destroy of a locked volume" w "$L/destroy" 1
	expect ENOKEY "$L" "scrub of a locked volume" w "$L/scrub" check
	expect ENOKEY "$L" "resize of a locked volume" w "$L/size" 128M
	expect ENOKEY "$L" "compression change of a locked volume" w "$L/compression" lz4
	expect EBUSY "$L" "layout change of a locked volume" w "$L/layout" raid10
	expect ENOKEY "$L" "enable of a locked volume without its key" w "$L/enable" 1
	cfs_write "$L/key" "$WRONG"
	expect EKEYREJECTED "$L" "enable with a wrong key" w "$L/enable" 1
	[ "$(cat "$L/state")" = locked ] || fail "a wrong key changed the state to $(cat "$L/state")"
	diag "$cases refusals on a locked volume, each with its errno and nothing changed"
	cfs_write "$L/key" "$KEY"
	cfs_write "$L/enable" 1
	dev=/dev/$(cat "$L/device")
	[ "$(disk_sum "$dev" 8)" = "$(cat "$state/locked.sum")" ] || fail "the unlocked volume's data changed"
	mkdir "$L/snapshots/s" || fail "snapshot of the unlocked volume"
	cfs_write "$L/snapshots/s/destroy" 1
	rmdir "$L/snapshots/s"
	remove_volume locked
	mkdir "$DPUBLK_CFS/ssds/lk3" && cfs_write "$DPUBLK_CFS/ssds/lk3/device" "$(ssd_pci 3)"
	[ "$(cat "$DPUBLK_CFS/ssds/lk3/state")" = attached ] || fail "SSD 3 not attached after the restart"
	detach_ssd lk3
	;;
*) fail "unknown DPUBLK_PERSIST_PHASE '$DPUBLK_PERSIST_PHASE'" ;;
esac
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
