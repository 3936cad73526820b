#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# I/O schedulers switched (none, mq-deadline, kyber) while fio verify runs
# on /dev/dpublk0: no errors, no mismatches, no kernel complaints.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

unload_dpublk
dmesg_mark
load_dpublk_disk
on_exit unload_dpublk
for s in mq-deadline kyber; do modprobe "$s-iosched" 2>/dev/null || modprobe "$s" 2>/dev/null || true; done
avail=$(cat /sys/block/dpublk0/queue/scheduler)
diag "schedulers: $avail"
(
	for round in $(seq 1 10); do
		for s in none mq-deadline kyber; do
			[[ $avail == *"$s"* ]] || continue
			echo "$s" >/sys/block/dpublk0/queue/scheduler 2>/dev/null
			sleep 0.5
		done
	done
) &
switcher=$!
on_exit "kill $switcher 2>/dev/null"
dpublk_fio_verify /dev/dpublk0 --bs=16k --iodepth=32 --numjobs=2 --size=16M --offset_increment=16M
wait $switcher
echo none >/sys/block/dpublk0/queue/scheduler
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
