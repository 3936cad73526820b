#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The whole management lifecycle through configfs: hand two SSDs to the
# accelerator, create a striped volume, enable it, fio verify on its disk,
# disable, destroy, detach; the SSDs are back under the nvme driver. A third
# SSD is attached and detached without a volume and keeps its data.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

unload_dpublk
dmesg_mark
[ "$(ssd_pci_addresses | wc -l)" -ge 3 ] || skip "needs 3 SSD functions"
load_dpublk_management

# SSD 2 keeps a pattern across attach and detach.
bdf2=$(ssd_pci 2)
dev2=$(wait_ssd_blockdev "$bdf2") || fail "SSD 2 has no nvme disk"
head -c 1M /dev/urandom >"$TEST_TMP/pattern"
dd if="$TEST_TMP/pattern" of="$dev2" bs=1M count=1 seek=7 oflag=direct conv=fsync status=none || fail "write pattern"
attach_ssd keep 2
[ ! -e "$dev2" ] || fail "$dev2 still present while attached"
# The nvme driver must not take it back while it is attached.
echo "$bdf2" >/sys/bus/pci/drivers_probe 2>/dev/null
sleep 0.5
[ "$(ssd_driver "$bdf2")" = none ] || fail "$bdf2 rebound to $(ssd_driver "$bdf2") while attached"
detach_ssd keep
dev2=$(wait_ssd_blockdev "$bdf2") || fail "SSD 2 not back"
dd if="$dev2" of="$TEST_TMP/back" bs=1M count=1 skip=7 iflag=direct status=none || fail "read pattern"
cmp -s "$TEST_TMP/pattern" "$TEST_TMP/back" || fail "SSD 2 data changed across attach/detach"

attach_ssd s0 0
attach_ssd s1 1
dev=$(make_volume vol0 s0,s1 stripe 256M chunk_size=64K)
[ "$(cat "$DPUBLK_CFS/volumes/vol0/state")" = optimal ] || fail "state $(cat "$DPUBLK_CFS/volumes/vol0/state")"
size=$(blockdev --getsize64 "$dev")
[ "$size" = $((256 << 20)) ] || fail "$dev is $size bytes, expected 256 MiB"
dpublk_fio_verify "$dev" --size=128M --bs=16k --iodepth=16
grep -q '^write_bytes [1-9]' "$DPUBLK_CFS/volumes/vol0/stats" || fail "statistics show no writes: $(cat "$DPUBLK_CFS/volumes/vol0/stats")"
# Enabled volumes cannot go.
rmdir "$DPUBLK_CFS/volumes/vol0" 2>/dev/null && fail "rmdir of an enabled volume succeeded"
cfs_write "$DPUBLK_CFS/volumes/vol0/enable" 0
[ ! -e "$dev" ] || fail "$dev still there after disable"
# An SSD holding a volume cannot be detached.
echo 0 >"$DPUBLK_CFS/ssds/s0/attach" 2>/dev/null && fail "detach of an SSD holding a volume succeeded"
remove_volume vol0
detach_ssd s0
detach_ssd s1
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
