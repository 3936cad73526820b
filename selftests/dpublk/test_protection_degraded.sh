#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Degraded mode on raid10 (2 copies), raid6 and ec 4+2: fio verify runs
# while one SSD, then a second one (within tolerance: one per mirror pair
# for raid10) fails mid-run; every block reads back (0 mismatches) and the
# volume says degraded. One more SSD failing its reads is beyond tolerance:
# reads fail with I/O errors, none returns wrong data. Needs 6 SSDs.
# DPUBLK_DEGRADED_FIO_MB (default 96, at most 96) is fio's region per
# layout; make check's sample writes less.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"
. "$(dirname "$0")/protection_common.sh"

unload_dpublk
dmesg_mark
protection_setup 6
fio_mb=${DPUBLK_DEGRADED_FIO_MB:-96}
[[ $fio_mb =~ ^[1-9][0-9]*$ ]] && [ "$fio_mb" -ge 16 ] && [ "$fio_mb" -le 96 ] ||
	fail "DPUBLK_DEGRADED_FIO_MB must be 16..96, not '$fio_mb'"

# degraded_case LAYOUT SSDS FIRST SECOND BEYOND [attr=value...]: FIRST
# fails completely, SECOND vanishes, both while fio runs; BEYOND then
# fails its reads.
degraded_case() {
	local layout=$1 ssds=$2 first=$3 second=$4 beyond=$5 dev
	shift 5
	dev=$(make_volume "$layout" "$ssds" "$layout" 128M "$@")
	[ "$(vol_state "$layout")" = optimal ] || fail "$layout: new volume is $(vol_state "$layout")"
	# Reference data past fio's region, for the beyond-tolerance reads.
	reference_write "$dev" 96 16
	fio_start "$dev" --size=${fio_mb}M
	fio_wait_busy "$dev"
	ssd_fault "$first" fail_all
	wait_state "$layout" degraded
	fio_running || fail "$layout: fio finished before the second failure"
	ssd_fault "$second" disappear
	fio_running || fail "$layout: fio finished before the second failure took effect"
	fio_finish
	[ "$(vol_state "$layout")" = degraded ] || fail "$layout: state $(vol_state "$layout") with two SSDs lost"
	grep -q '^state degraded$' "$DPUBLK_CFS/volumes/$layout/stats" || fail "$layout: stats do not say degraded"
	check_reference "$dev" 96 16
	[ "$REF_FAILED" = 0 ] || fail "$layout: $REF_FAILED reads of the reference data failed within tolerance"
	# Beyond tolerance.
	ssd_fault "$beyond" fail_reads 0 0
	check_reference "$dev" 96 16
	[ "$REF_FAILED" -gt 0 ] || fail "$layout: every read succeeded with three SSDs out"
	diag "$layout: beyond tolerance $REF_FAILED of 16 reads failed, none returned wrong data"
	ssd_fault "$beyond" clear
	check_reference "$dev" 96 16
	[ "$REF_FAILED" = 0 ] || fail "$layout: reads still fail once back within tolerance"
	remove_volume "$layout"
	# Faults go after the volume (a CLEAR on a member would re-add it).
	ssd_fault "$first" clear
	ssd_fault "$second" clear
}

# Mirror pairs (s0,s1) and (s2,s3): one SSD of each pair, then s0's partner.
degraded_case raid10 s0,s1,s2,s3 s0 s3 s1 copies=2
degraded_case raid6 s0,s1,s2,s3,s4,s5 s1 s4 s2
degraded_case ec s0,s1,s2,s3,s4,s5 s5 s0 s3 ec_k=4 ec_m=2
dmesg_check_clean
exit $KSFT_PASS
