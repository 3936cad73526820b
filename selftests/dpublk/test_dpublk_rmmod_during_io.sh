#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Teardown with I/O in flight. While fio runs on /dev/dpublk0, rmmod must not
# hang (it refuses: the open disk holds the module); unbinding the PCI
# function must remove the disk, fail fio's I/O and return; afterwards the
# module unloads, loads again and the disk works.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

unload_dpublk
dmesg_mark
load_dpublk_disk
pci=$(accelerator_pci)
start_fio() {
	fio --name=busy --filename=/dev/dpublk0 --ioengine=io_uring --direct=1 --allow_file_create=0 --rw=randrw \
		--bs=4k --iodepth=32 --numjobs=2 --size=64M --time_based --runtime=60 \
		>"$TEST_TMP/fio.out" 2>&1 &
	fio_pid=$!
	wait_disk_busy $fio_pid
}
wait_fio_gone() {
	local i
	for i in $(seq 1 300); do kill -0 $fio_pid 2>/dev/null || return 0; sleep 0.1; done
	fail "fio still running 30 s after $1"
}
start_fio
on_exit "kill $fio_pid 2>/dev/null"
if timeout 60 rmmod dpublk 2>"$TEST_TMP/rmmod.err"; then
	diag "rmmod succeeded while fio ran"
else
	[ $? = 124 ] && fail "rmmod hung while fio ran"
	diag "rmmod refused while the disk is open: $(cat "$TEST_TMP/rmmod.err")"
	timeout 60 sh -c "echo $pci >/sys/bus/pci/drivers/dpublk/unbind" || fail "unbind hung or failed while fio ran"
fi
wait_fio_gone "the device went away"
[ ! -e /dev/dpublk0 ] || fail "/dev/dpublk0 still there after unbind"
timeout 60 rmmod dpublk 2>/dev/null || ! dpublk_loaded || fail "rmmod after unbind failed"
load_dpublk_disk
dpublk_fio_verify /dev/dpublk0 --bs=4k --iodepth=16 --size=8M
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
