#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Scrub finds and repairs silent corruption on raid6 and ec 4+2: the
# volume is written, then data at rest on one SSD decays (fault rot: a bit
# flipped in every sector of six ranges), a scrub check counts the
# mismatches (twice the same: a check repairs nothing), a scrub repair
# repairs all of them, every byte reads back as written, and a new check
# finds 0. (Corruption at write time, fault corrupt, is not what a scrub is
# for: a later partial-row write may fold the bad chunk into the parity;
# Documentation/configfs.rst.) A scrub runs in the
# background: the write to volumes/NAME/scrub returns at once and the test
# polls the attribute (state, progress, rows) until it is done
# (protection_common.sh). Needs 6 SSDs.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"
. "$(dirname "$0")/protection_common.sh"

unload_dpublk
dmesg_mark
protection_setup 6

# scrub_case NAME LAYOUT VICTIM [attr=value...]
scrub_case() {
	local name=$1 layout=$2 victim=$3 dev report found
	shift 3
	dev=$(make_volume "$name" s0,s1,s2,s3,s4,s5 "$layout" 128M "$@")
	[ "$(scrub "$name" check)" = "mismatches 0 repaired 0" ] || fail "$name: a new volume has mismatches"
	# 96 MiB of volume data put about 24 MiB on each member. Past the
	# member's label, array journal and the pool's first blocks, six 64 KiB
	# ranges from 16 MiB on, 17 rows apart, then rot. Parity rotates, so
	# some of them hold data and some parity.
	reference_write "$dev" 0 96
	for i in 0 1 2 3 4 5; do ssd_fault "$victim" rot $((32768 + i * 2176)) 128; done
	report=$(scrub "$name" check)
	found=$(awk '$1 == "mismatches" && $3 == "repaired" { print $2 }' <<<"$report")
	[ -n "$found" ] && [ "$found" -gt 0 ] || fail "$name: the check found nothing: '$report'"
	[ "$report" = "mismatches $found repaired 0" ] || fail "$name: check reported '$report'"
	expect_stat "$name" scrub_mismatches -eq "$found"
	[ "$(scrub "$name" check)" = "mismatches $found repaired 0" ] || fail "$name: a second check differs (did the first one change something?)"
	[ "$(scrub "$name" repair)" = "mismatches $found repaired $found" ] || fail "$name: the repair did not repair all $found mismatches"
	expect_stat "$name" scrub_repaired -eq "$found"
	check_reference "$dev" 0 96
	[ "$REF_FAILED" = 0 ] || fail "$name: $REF_FAILED reads fail after the repair"
	[ "$(scrub "$name" check)" = "mismatches 0 repaired 0" ] || fail "$name: mismatches left after the repair"
	diag "$name: $found corrupted sectors on $victim found, repaired, data verified"
	remove_volume "$name"
	ssd_fault "$victim" clear
}

scrub_case r6 raid6 s2
scrub_case ec42 ec s4 ec_k=4 ec_m=2
dmesg_check_clean
exit $KSFT_PASS
