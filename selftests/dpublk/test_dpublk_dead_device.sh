#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The accelerator stops answering while fio runs on /dev/dpublk0 (dpuemu is
# frozen with SIGSTOP; kill -9 would crash QEMU 11.1's vfio-user client):
# the timed-out command is aborted, the Abort times out too, the controller
# reset that follows finds the registers unreachable, the controller is
# failed, the outstanding I/O fails within about a minute, nothing hangs
# or oopses, and the driver lets go of the dead device (rmmod completes,
# the disk is gone), and the module loads and unloads again afterwards.
# Needs the host agent's dpuemu-freeze/dpuemu-thaw.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

[ -z "${DPUBLK_TEST_BIND:-}" ] || skip "needs dpuemu"
unload_dpublk
dmesg_mark
load_dpublk_disk
# Writes only: when dpuemu is thawed for the teardown, it finishes the
# commands it had taken. A finished write only reads guest memory; a
# finished read would write into pages the guest already reused for
# something else once the driver failed the request (no IOMMU here to stop
# a device the driver could not disable), and crash guest programs.
fio --name=busy --filename=/dev/dpublk0 --ioengine=io_uring --direct=1 --allow_file_create=0 --rw=randwrite \
	--bs=4k --iodepth=32 --size=64M --time_based --runtime=120 \
	>"$TEST_TMP/fio.out" 2>&1 &
fio_pid=$!
on_exit "kill -9 $fio_pid 2>/dev/null"
wait_disk_busy $fio_pid
host_request dpuemu-freeze >/dev/null
on_exit "host_request dpuemu-thaw >/dev/null"
killed=$(date +%s)
for _ in $(seq 1 120); do kill -0 $fio_pid 2>/dev/null || break; sleep 1; done
kill -0 $fio_pid 2>/dev/null && fail "fio still running $(($(date +%s) - killed)) s after dpuemu stopped"
took=$(($(date +%s) - killed))
wait $fio_pid && fail "fio reported no error although the device died"
diag "fio failed $took s after dpuemu stopped"
dmesg_since_mark | grep -q 'timed out' || fail "no timeout reported by the driver"
dmesg_since_mark | grep -q 'controller reset failed' || fail "no failed controller reset reported"
# New I/O fails at once now: the failed reset marked the disk dead (its
# size drops to 0), so a read returns no data, by an error or at once as
# the end of the device.
got=$(timeout 30 dd if=/dev/dpublk0 bs=4k count=1 iflag=direct status=none 2>/dev/null | wc -c)
[ "$got" = 0 ] || fail "a read from the dead device returned $got bytes"
# Teardown of the failed controller. dpuemu is thawed first: while a
# vfio-user server is stopped, QEMU blocks the vCPU on every config-space
# access for its 10 s message timeout, so the PCI core's MSI-X shutdown
# stalls the guest (RCU stall reports). A dead PCIe link answers all-ones at
# once instead; the driver has already failed the controller and sends it no
# further commands either way.
host_request dpuemu-thaw >/dev/null
timeout 120 rmmod dpublk || fail "rmmod hung or failed with the controller failed"
[ ! -e /dev/dpublk0 ] || fail "/dev/dpublk0 still there after rmmod"
dmesg_since_mark | grep -E 'dpublk|timed out' | sed 's/^/#   /' | tail -12
# The module loads and unloads again afterwards: the dead function is
# refused at probe (QEMU's vfio-user connection does not come back after
# the freeze, so its registers read all ones), the rest of the driver works.
timeout 60 insmod "$DPUBLK_MODULE" || fail "insmod after the dead device failed"
[ -d "$CONFIGFS/dpublk/volumes" ] || fail "no configfs tree after the reload"
[ ! -e /dev/dpublk0 ] || fail "a disk appeared for the dead device"
timeout 60 rmmod dpublk || fail "rmmod after the reload failed"
dmesg_check_clean
exit $KSFT_PASS
