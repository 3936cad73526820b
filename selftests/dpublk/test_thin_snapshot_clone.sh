#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Snapshots and clones of a thin volume (issue 7), checked on data:
#
# - a snapshot never changes: a clone made of it before the origin is
#   written is read and checksummed again and again while fio verify
#   rewrites the origin, and always gives the snapshot-time checksum;
# - a second clone is written (fio verify) without touching the origin or
#   the first clone, and keeps the snapshot's data where it was not written;
# - revert brings the origin back to the snapshot-time checksum;
# - space accounting follows: 64 MiB of random data on a volume without
#   data services is 64 MiB of records, exclusive until the snapshot shares
#   them, exclusive again once fio overwrote them; a clone shares its
#   snapshot's blocks until they are overwritten.
#
# Snapshots are not block devices, so the snapshot is read through its
# first clone, which nobody writes.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

MiB=$((1 << 20))
unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 1 ] || skip "needs an SSD function"
dmesg_mark
load_dpublk_management
V=$DPUBLK_CFS/volumes

attach_ssd s0 0
origin=$(make_volume origin s0 linear 96M thin=1) || fail "$origin"
head -c 64M /dev/urandom >"$TEST_TMP/initial"
dd if="$TEST_TMP/initial" of="$origin" bs=1M oflag=direct conv=fsync status=none || fail "writing the origin"
snap_sum=$(disk_sum "$origin")
expect_stat origin logical_bytes -eq $((64 * MiB))
expect_stat origin exclusive_bytes -eq $((64 * MiB))
expect_stat origin shared_bytes -eq 0
expect_stat origin physical_bytes -ge $((64 * MiB))

# The snapshot shares every record with the origin.
mkdir "$V/origin/snapshots/S" || fail "mkdir snapshots/S"
id=$(cat "$V/origin/snapshots/S/id")
[ "$id" -ge 1 ] || fail "snapshot id '$id'"
expect_stat origin shared_bytes -eq $((64 * MiB))
expect_stat origin exclusive_bytes -eq 0

c1=$(clone_snapshot origin S c1) || fail "$c1"
[ "$(disk_sum "$c1")" = "$snap_sum" ] || fail "clone c1 does not read as the snapshot"
expect_stat c1 logical_bytes -eq $((64 * MiB))
expect_stat c1 shared_bytes -eq $((64 * MiB))
expect_stat c1 exclusive_bytes -eq 0
diag "snapshot S (id $id) cloned into c1 ($c1); checksum $snap_sum"

# fio verify rewrites the origin's 64 MiB while c1 is read over and over.
out=$TEST_TMP/origin-fio.json
fio --name=origin --filename="$origin" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
	--iodepth=16 --size=64M --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 \
	--output-format=json --output="$out" >"$TEST_TMP/fio.log" 2>&1 &
fio_pid=$!
on_exit "kill $fio_pid 2>/dev/null; wait $fio_pid 2>/dev/null"
# writes_done DEV: write requests the disk completed so far.
writes_done() { awk '{ print $5 }' "/sys/block/$(basename "$1")/stat"; }
rounds=0 overlapped=0
while kill -0 "$fio_pid" 2>/dev/null; do
	before=$(writes_done "$origin")
	sum=$(disk_sum "$c1")
	[ "$sum" = "$snap_sum" ] || fail "the snapshot changed while the origin was written (round $rounds: $sum)"
	rounds=$((rounds + 1))
	[ "$(writes_done "$origin")" -gt "$before" ] && overlapped=$((overlapped + 1))
done
wait "$fio_pid" || { sed 's/^/#   /' "$TEST_TMP/fio.log" | tail -20; fail "fio verify on the origin failed"; }
sed -n '/^{/,$p' "$out" >"$out.clean"
[ "$(jq '[.jobs[].error] | add' "$out.clean")" = 0 ] || fail "fio reported an error on the origin"
written=$(jq '[.jobs[].write.io_bytes] | add' "$out.clean")
[ "$written" = $((64 * MiB)) ] || fail "fio wrote $written bytes to the origin, expected 64 MiB"
# Reads of c1 that saw the origin's write count grow ran while fio wrote.
[ "$overlapped" -ge 2 ] || fail "only $overlapped of $rounds reads of c1 overlapped fio's writes: the test proved nothing"
diag "origin rewritten and verified by fio; c1 read $rounds times meanwhile ($overlapped during writes), unchanged"
[ "$(disk_sum "$c1")" = "$snap_sum" ] || fail "the snapshot changed after the origin was written"
origin_sum=$(disk_sum "$origin")
[ "$origin_sum" != "$snap_sum" ] || fail "fio did not change the origin"
# Redirect-on-write: the origin's 64 MiB are new records, the snapshot
# keeps the old ones, so the pool holds both.
expect_stat origin logical_bytes -eq $((64 * MiB))
expect_stat origin exclusive_bytes -eq $((64 * MiB))
expect_stat origin shared_bytes -eq 0
expect_stat origin physical_bytes -ge $((128 * MiB))
expect_stat c1 shared_bytes -eq $((64 * MiB))

# A second clone, written in its first 32 MiB: the origin and c1 stay.
c2=$(clone_snapshot origin S c2) || fail "$c2"
[ "$c2" != "$c1" ] && [ "$c2" != "$origin" ] || fail "c2 got the disk $c2 of another volume"
dpublk_fio_verify "$c2" --size=32M
[ "$(disk_sum "$origin")" = "$origin_sum" ] || fail "writing clone c2 changed the origin"
[ "$(disk_sum "$c1")" = "$snap_sum" ] || fail "writing clone c2 changed clone c1"
dd if="$c2" bs=1M skip=32 count=32 iflag=direct status=none >"$TEST_TMP/c2.tail" || fail "reading c2"
cmp -s "$TEST_TMP/c2.tail" <(tail -c 32M "$TEST_TMP/initial") ||
	fail "c2 lost the snapshot's data past what fio wrote"
expect_stat c2 logical_bytes -eq $((64 * MiB))
expect_stat c2 exclusive_bytes -eq $((32 * MiB))
expect_stat c2 shared_bytes -eq $((32 * MiB))

# Revert: the origin reads as it did when the snapshot was taken.
# Its disk would see its blocks change under it, so an enabled volume is
# not reverted.
echo 1 >"$V/origin/snapshots/S/revert" 2>"$TEST_TMP/err" && fail "revert of an enabled volume succeeded"
grep -q "Device or resource busy" "$TEST_TMP/err" || fail "revert of an enabled volume: $(cat "$TEST_TMP/err")"
cfs_write "$V/origin/enable" 0
cfs_write "$V/origin/snapshots/S/revert" 1
cfs_write "$V/origin/enable" 1
origin=/dev/$(cat "$V/origin/device")
[ -b "$origin" ] || fail "no disk for the origin after revert"
[ "$(disk_sum "$origin")" = "$snap_sum" ] || fail "the reverted origin does not read as the snapshot"
expect_stat origin logical_bytes -eq $((64 * MiB))
expect_stat origin shared_bytes -eq $((64 * MiB))
expect_stat origin exclusive_bytes -eq 0
[ "$(disk_sum "$c1")" = "$snap_sum" ] || fail "revert changed clone c1"
diag "origin reverted to S: checksum $snap_sum again"

# Teardown in dependency order: clones (they do not need the snapshot),
# the snapshot, the origin; then the SSD is free again.
for c in c1 c2; do remove_volume "$c"; done
cfs_write "$V/origin/snapshots/S/destroy" 1
rmdir "$V/origin/snapshots/S" || fail "rmdir snapshots/S"
remove_volume origin
detach_ssd s0
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
