#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# CPU 1 goes offline and online again several times while fio verify runs
# on /dev/dpublk0 (its hardware queue and interrupt move or drain): no
# errors, no mismatches, no kernel complaints.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

cpu=/sys/devices/system/cpu/cpu1/online
[ -w $cpu ] || skip "CPU 1 cannot go offline"
unload_dpublk
dmesg_mark
load_dpublk_disk
on_exit "echo 1 >$cpu; rmmod dpublk 2>/dev/null"
(
	for round in $(seq 1 6); do
		echo 0 >$cpu
		sleep 1
		echo 1 >$cpu
		sleep 1
	done
) &
toggler=$!
on_exit "kill $toggler 2>/dev/null"
dpublk_fio_verify /dev/dpublk0 --bs=4k --iodepth=32 --numjobs=2 --size=16M --offset_increment=16M
wait $toggler
[ "$(cat $cpu)" = 1 ] || fail "CPU 1 did not come back"
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
