#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The accelerator function is removed from the PCI bus (sysfs remove) while
# fio runs: the disk goes away, fio's I/O fails, nothing hangs; a bus
# rescan brings the function back, the driver binds it again and the disk
# works.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

unload_dpublk
dmesg_mark
load_dpublk_disk
pci=$(accelerator_pci)
fio --name=busy --filename=/dev/dpublk0 --ioengine=io_uring --direct=1 --allow_file_create=0 \
	--rw=randrw --bs=4k --iodepth=32 --size=64M --time_based --runtime=60 \
	>"$TEST_TMP/fio.out" 2>&1 &
fio_pid=$!
on_exit "kill -9 $fio_pid 2>/dev/null"
wait_disk_busy $fio_pid
timeout 60 sh -c "echo 1 >/sys/bus/pci/devices/$pci/remove" || fail "PCI remove hung or failed"
for _ in $(seq 1 300); do kill -0 $fio_pid 2>/dev/null || break; sleep 0.1; done
! kill -0 $fio_pid 2>/dev/null || fail "fio still running 30 s after the function was removed"
[ ! -e /dev/dpublk0 ] || fail "/dev/dpublk0 still there after PCI remove"
echo 1 >/sys/bus/pci/rescan
for _ in $(seq 1 100); do [ -b /dev/dpublk0 ] && break; sleep 0.1; done
[ -b /dev/dpublk0 ] || fail "no disk after rescan"
# Disk numbers are given back on removal, so the disk is dpublk0 again.
dpublk_fio_verify /dev/dpublk0 --bs=4k --iodepth=16 --size=8M
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
