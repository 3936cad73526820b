#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The driver binds the accelerator, sets up its queues and shows a disk whose
# size and block size come from Identify; unbinding takes it all away.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

unload_dpublk
dmesg_mark
load_dpublk_disk
pci=$(accelerator_pci)
[ "$(basename "$(readlink /sys/bus/pci/devices/$pci/driver)")" = dpublk ] || fail "$pci not bound to dpublk"
dmesg_since_mark | grep -q 'I/O queue pairs of' || fail "no queue setup message"
queues=$(ls -d /sys/block/dpublk0/mq/* | wc -l)
[ "$queues" -ge 1 ] || fail "no hardware queues"
size=$(blockdev --getsize64 /dev/dpublk0) || fail "blockdev --getsize64"
[ "$size" -gt 0 ] || fail "dpublk0 has size 0"
lbs=$(cat /sys/block/dpublk0/queue/logical_block_size)
case $lbs in 512 | 1024 | 2048 | 4096) ;; *) fail "odd logical block size $lbs" ;; esac
# Only mapped addresses reach the device: with the vIOMMU the function sits
# in a translated IOMMU group.
if [ "${DPUBLK_IOMMU:-0}" = 1 ]; then
	[ -e "/sys/bus/pci/devices/$pci/iommu_group" ] || fail "no IOMMU group with --iommu"
fi
diag "dpublk0: $size bytes, block size $lbs, $queues hardware queues, iommu=${DPUBLK_IOMMU:-0}"
unload_dpublk
[ ! -e /dev/dpublk0 ] || fail "/dev/dpublk0 still there after rmmod"
dmesg_since_mark | grep -q 'accelerator released' || fail "no release message"
dmesg_check_clean
exit $KSFT_PASS
