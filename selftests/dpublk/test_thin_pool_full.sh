#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A thin volume larger than its pool (issue 7): a 1 GiB volume on one
# 512 MiB SSD is filled by fio until the pool is full. The write that finds
# no space fails with ENOSPC (fio error 28, dd "No space left on device"),
# the data written before stays intact, and once a range is discarded
# writes resume and read back. The volume's counters follow: logical bytes
# cover what was written, the pool's free bytes run out and come back.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

MiB=$((1 << 20))
unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 1 ] || skip "needs an SSD function"
dmesg_mark
load_dpublk_management

attach_ssd s0 0
vol=$(make_volume full s0 linear 1G thin=1) || fail "$vol"
[ "$(blockdev --getsize64 "$vol")" = $((1024 * MiB)) ] || fail "$vol is not 1 GiB"
capacity=$(vol_stat full pool_capacity_bytes) || fail "no pool_capacity_bytes"
[ "$capacity" -lt $((1024 * MiB)) ] || fail "pool capacity $capacity: the volume is not larger than its pool"
diag "1 GiB thin volume on a pool of $((capacity / MiB)) MiB"

# The first 16 MiB, written before the pool fills, must survive it.
head -c 16M /dev/urandom >"$TEST_TMP/first"
dd if="$TEST_TMP/first" of="$vol" bs=1M oflag=direct conv=fsync status=none || fail "writing the first 16 MiB"

# Fill the rest sequentially with 1 MiB writes until the pool is full.
out=$TEST_TMP/fill.json
fio --name=fill --filename="$vol" --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=4 \
	--offset=16M --size=1008M --output-format=json --output="$out" >"$TEST_TMP/fio.log" 2>&1 &&
	fail "fio filled 1 GiB on a pool of $((capacity / MiB)) MiB without an error"
sed -n '/^{/,$p' "$out" >"$out.clean"
error=$(jq '.jobs[0].error' "$out.clean") || fail "no fio report: $(tail -5 "$TEST_TMP/fio.log")"
[ "$error" = 28 ] || fail "fio stopped with error $error, expected 28 (ENOSPC): $(tail -5 "$TEST_TMP/fio.log")"
written=$(jq '.jobs[0].write.io_bytes' "$out.clean")
diag "fio wrote $((written / MiB)) MiB past the first 16 MiB, then got ENOSPC"
[ "$written" -ge $((capacity / 2)) ] || fail "the pool was full after only $written bytes"
# Another write anywhere unmapped fails the same way.
head -c 1M /dev/urandom >"$TEST_TMP/one"
dd if="$TEST_TMP/one" of="$vol" bs=1M seek=1000 oflag=direct status=none 2>"$TEST_TMP/dd.err" &&
	fail "a write to a full pool succeeded"
grep -q "No space left on device" "$TEST_TMP/dd.err" || fail "write to a full pool: $(cat "$TEST_TMP/dd.err")"

# Nothing written before is lost, and the counters say the pool is full:
# what the volume maps is at least what was acknowledged (a failed 1 MiB
# write may have stored its first blocks) and the pool has no room left
# beyond its metadata reserve.
dd if="$vol" of="$TEST_TMP/first.back" bs=1M count=16 iflag=direct status=none || fail "reading the first 16 MiB"
cmp -s "$TEST_TMP/first" "$TEST_TMP/first.back" || fail "the first 16 MiB changed when the pool filled"
logical=$(vol_stat full logical_bytes) || fail "no logical_bytes"
[ "$logical" -ge $((16 * MiB + written)) ] || fail "logical_bytes $logical < $((16 * MiB + written)) written"
[ "$logical" -le $((16 * MiB + written + 4 * MiB)) ] || fail "logical_bytes $logical > what was written"
free=$(vol_stat full pool_free_bytes) || fail "no pool_free_bytes"
[ "$free" -lt $((capacity / 20)) ] || fail "the pool is full but reports $free free bytes"
expect_stat full exclusive_bytes -eq "$logical"

# Discard 64 MiB; after the next flush the space is back and writes resume.
blkdiscard -o $((16 * MiB)) -l $((64 * MiB)) "$vol" || fail "blkdiscard"
expect_stat full logical_bytes -eq $((logical - 64 * MiB))
head -c 32M /dev/urandom >"$TEST_TMP/again"
dd if="$TEST_TMP/again" of="$vol" bs=1M seek=16 oflag=direct conv=fsync status=none 2>"$TEST_TMP/dd.err" ||
	fail "writing after discard: $(cat "$TEST_TMP/dd.err")"
dd if="$vol" of="$TEST_TMP/again.back" bs=1M skip=16 count=32 iflag=direct status=none || fail "reading back"
cmp -s "$TEST_TMP/again" "$TEST_TMP/again.back" || fail "data written after the discard reads back wrong"
dd if="$vol" bs=1M skip=48 count=32 iflag=direct status=none | cmp -s - <(head -c 32M /dev/zero) ||
	fail "the discarded range past the new data does not read as zeroes"
free2=$(vol_stat full pool_free_bytes) || fail "no pool_free_bytes"
# 64 MiB freed, 32 used again; the metadata may have grown meanwhile (a
# new checkpoint is written before the old one is released).
[ "$free2" -ge $((free + 16 * MiB)) ] || fail "pool_free_bytes $free2 after freeing 64 MiB and using 32 (was $free)"
cmp -s "$TEST_TMP/first" <(dd if="$vol" bs=1M count=16 iflag=direct status=none) || fail "the first 16 MiB changed"
diag "discard gave back $(((free2 - free) / MiB)) MiB net; writes resumed"

remove_volume full
detach_ssd s0
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
