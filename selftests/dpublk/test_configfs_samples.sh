#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The scripts in samples/ work as a user would run them: a striped volume,
# a raid6 volume with compression and encryption, a snapshot and a clone,
# and the teardown that gives the SSDs back.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 4 ] || skip "needs 4 SSD functions"
dmesg_mark
load_dpublk_management
samples=$DPUBLK_TOP/samples
run() {
	"$@" >"$TEST_TMP/sample.out" 2>&1 || { sed 's/^/#   /' "$TEST_TMP/sample.out"; fail "$(basename "$1") failed"; }
	sed 's/^/# /' "$TEST_TMP/sample.out"
}

run "$samples/stripe-volume.sh" fast 128M "$(ssd_pci 0)" "$(ssd_pci 1)"
grep -q "volume fast is /dev/dpublk" "$TEST_TMP/sample.out" || fail "stripe sample did not report the disk"
dpublk_fio_verify "/dev/$(cat "$DPUBLK_CFS/volumes/fast/device")" --size=64M
run "$samples/teardown.sh" fast
[ ! -d "$DPUBLK_CFS/volumes/fast" ] || fail "teardown left volumes/fast"
# A serial number names an SSD as well as a PCI address does.
serial3=$(cat "/sys/bus/pci/devices/$(ssd_pci 3)/nvme/"nvme*/serial 2>/dev/null | head -1 | tr -d ' ')
[ -n "$serial3" ] || fail "no serial for SSD 3"
run "$samples/raid6-compressed-encrypted.sh" safe 128M "$TEST_TMP/key" \
	"$(ssd_pci 0)" "$(ssd_pci 1)" "$(ssd_pci 2)" "$serial3"
[ "$(stat -c %s "$TEST_TMP/key")" = 64 ] || fail "no 64-byte key file"
[ "$(cat "$DPUBLK_CFS/volumes/safe/layout")" = raid6 ] || fail "not raid6"
[ "$(cat "$DPUBLK_CFS/volumes/safe/encryption")" = aes-xts-256 ] || fail "not encrypted"
safe=/dev/$(cat "$DPUBLK_CFS/volumes/safe/device")
dpublk_fio_verify "$safe" --size=64M
before=$(dd if="$safe" bs=1M count=64 iflag=direct status=none | sha256sum)
run "$samples/snapshot-clone.sh" safe monday safe-monday
copy=/dev/$(cat "$DPUBLK_CFS/volumes/safe-monday/device")
head -c 16M /dev/urandom | dd of="$safe" bs=1M oflag=direct conv=fsync status=none
[ "$(dd if="$copy" bs=1M count=64 iflag=direct status=none | sha256sum)" = "$before" ] ||
	fail "the clone does not hold the snapshot's data"
run "$samples/teardown.sh" safe-monday safe
for i in 0 1 2 3; do
	wait_ssd_blockdev "$(ssd_pci $i)" >/dev/null || fail "SSD $i not back under nvme"
done
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
