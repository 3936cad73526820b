#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# fio verify through the stock nvme driver on every local SSD function:
# proves dpuemu's transport, DMA (with or without the vIOMMU) and MSI-X.
. "$(dirname "$0")/test_common.sh"

devs=$(dpublk_ssd_devices)
[ -n "$devs" ] || skip "no local SSD functions"
if [ "${DPUBLK_IOMMU:-0}" = 1 ]; then
	# Every SSD function must sit in an IOMMU group that translates DMA
	# (not an identity/passthrough domain), or this run proves nothing.
	for fn in $(lspci -Dn -d 1af4:10f1 | awk '{print $1}'); do
		group=$(readlink -f "/sys/bus/pci/devices/$fn/iommu_group") || fail "$fn has no IOMMU group"
		type=$(cat "$group/type")
		case $type in DMA | DMA-FQ) ;; *) fail "$fn's IOMMU domain type is '$type', DMA is not translated" ;; esac
	done
	diag "SSD functions behind the vIOMMU with translated DMA domains"
fi
dmesg_mark
for dev in $devs; do
	# Disjoint ranges per block size, so one pass cannot hide another's bug.
	fio_verify "$dev" --bs=4k --iodepth=32 --size=16M --offset=0
	fio_verify "$dev" --bs=128k --iodepth=32 --size=32M --offset=64M
done
# An independent check of the data path: a random pattern written with dd
# reads back byte for byte after the page cache is bypassed.
for dev in $devs; do
	head -c 2M /dev/urandom >"$TEST_TMP/pattern"
	dd if="$TEST_TMP/pattern" of="$dev" bs=1M seek=200 oflag=direct conv=fsync status=none || fail "dd to $dev"
	dd if="$dev" of="$TEST_TMP/readback" bs=1M skip=200 count=2 iflag=direct status=none || fail "dd from $dev"
	cmp -s "$TEST_TMP/pattern" "$TEST_TMP/readback" || fail "pattern read back from $dev differs"
done
dmesg_check_clean
diag "iommu=${DPUBLK_IOMMU:-0}: verified $(echo $devs | wc -w) SSDs"
exit $KSFT_PASS
