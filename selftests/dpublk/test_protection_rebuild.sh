#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Rebuild onto a spare SSD while fio verify runs, on raid10 (2 copies),
# raid6 and ec 4+2: a member fails mid-run, volumes/<v>/replace puts the
# spare in its place, the state goes degraded -> rebuilding -> optimal and
# fio reads back every block (0 mismatches). The rebuilt SSD then carries
# its share: with as many other members out as the layout tolerates, the
# data still reads back unchanged. The replaced SSD is released (it detaches
# and the nvme driver takes it back). Needs 7 SSDs.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"
. "$(dirname "$0")/protection_common.sh"

unload_dpublk
dmesg_mark
protection_setup 7

# rebuild_case LAYOUT SSDS OLD SPARE "OTHERS" [attr=value...]: OLD fails
# while fio runs and SPARE replaces it; OTHERS then fail their reads.
rebuild_case() {
	local layout=$1 ssds=$2 old=$3 spare=$4 others=$5 dev seen=0 i now sum before after s
	shift 5
	dev=$(make_volume "$layout" "$ssds" "$layout" 128M "$@")
	before=$(date +%s)
	fio_start "$dev" --size=64M
	fio_wait_busy "$dev"
	ssd_fault "$old" fail_all
	wait_state "$layout" degraded
	fio_running || fail "$layout: fio finished before the replacement"
	cfs_write "$DPUBLK_CFS/volumes/$layout/replace" "$old $spare"
	for i in $(seq 1 1200); do
		now=$(vol_state "$layout")
		[ "$now" = rebuilding ] && seen=1
		[ "$now" = optimal ] && break
		[ "$now" = rebuilding ] || [ "$now" = degraded ] || fail "$layout: state '$now' during the rebuild"
		sleep 0.1
	done
	[ "$now" = optimal ] || fail "$layout: still '$now' 120 s after the replacement"
	[ "$seen" = 1 ] || fail "$layout: the state never said rebuilding"
	diag "$layout: rebuilt onto $spare ($(($(date +%s) - before)) s since fio started); fio still running: $(fio_running && echo yes || echo no)"
	grep -q '^rebuild_percent ' "$DPUBLK_CFS/volumes/$layout/stats" || fail "$layout: no rebuild_percent in stats"
	fio_finish
	[ "$(vol_state "$layout")" = optimal ] || fail "$layout: $(vol_state "$layout") after the rebuild"
	sum=$(disk_sum "$dev" 64)
	for s in $others; do ssd_fault "$s" fail_reads 0 0; done
	[ "$(disk_sum "$dev" 64)" = "$sum" ] || fail "$layout: data differs when it must come from the rebuilt $spare"
	for s in $others; do ssd_fault "$s" clear; done
	after=$(vol_stat "$layout" degraded_reads) || fail "no degraded_reads"
	diag "$layout: data unchanged with $others unreadable ($after degraded reads)"
	# The replaced SSD is not in use any more: it detaches (which ends its
	# fault) and comes back under nvme.
	detach_ssd "$old"
	remove_volume "$layout"
	attach_ssd "$old" "${old#s}"
}

# Mirror pairs (s0,s1) and (s2,s3): s2 replaced by s6, then its partner s3
# is unreadable.
rebuild_case raid10 s0,s1,s2,s3 s2 s6 "s3" copies=2
rebuild_case raid6 s0,s1,s2,s3,s4,s5 s1 s6 "s0 s5"
rebuild_case ec s0,s1,s2,s3,s4,s5 s4 s6 "s2 s3" ec_k=4 ec_m=2
dmesg_check_clean
exit $KSFT_PASS
