#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Flush, FUA, discard and write zeroes reach the accelerator, within the limits
# the disk advertises: the volume's own command counters (configfs stats)
# move when they should and only then, ranges read back as zeroes, and a
# large write-zeroes is split at the advertised limit.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

unload_dpublk
dmesg_mark
load_dpublk_management
attach_ssd f0 0
dev=$(make_volume flush0 f0 linear 384M)
name=$(basename "$dev")
stat_of() { awk -v k="$1" '$1 == k { print $2 }' "$DPUBLK_CFS/volumes/flush0/stats"; }

[ "$(cat "/sys/block/$name/queue/write_cache")" = "write back" ] || fail "no volatile write cache advertised"
[ "$(cat "/sys/block/$name/queue/fua")" = 1 ] || fail "FUA not advertised"
wz_max=$(cat "/sys/block/$name/queue/write_zeroes_max_bytes")
dc_max=$(cat "/sys/block/$name/queue/discard_max_hw_bytes")
[ "$wz_max" -gt 0 ] && [ "$dc_max" -gt 0 ] || fail "no write zeroes ($wz_max) or discard ($dc_max) limit"

# Flush: 256 O_DIRECT writes send no flush of their own (closing the
# device may send one); each fsync sends at least one.
before=$(stat_of flush_commands)
writes=$(stat_of write_commands)
head -c 1M /dev/urandom | dd of="$dev" bs=4k oflag=direct status=none
[ $(($(stat_of write_commands) - writes)) -ge 256 ] || fail "the writes did not reach the device"
plain=$(($(stat_of flush_commands) - before))
[ "$plain" -le 1 ] || fail "256 plain writes sent $plain flushes"
before=$(stat_of flush_commands)
for i in 1 2 3; do
	head -c 64k /dev/urandom | dd of="$dev" bs=64k seek=$i oflag=direct conv=fsync status=none
done
synced=$(($(stat_of flush_commands) - before))
[ "$synced" -ge 3 ] || fail "3 fsyncs sent $synced flushes"
diag "flushes: $plain for 256 plain writes, $synced for 3 fsyncs"
# FUA: O_DSYNC direct writes go out as FUA writes (the disk advertises
# FUA), not as write + flush; plain writes carry no FUA.
fua=$(stat_of fua_writes)
head -c 1M /dev/urandom | dd of="$dev" bs=4k oflag=direct status=none
[ "$(stat_of fua_writes)" = "$fua" ] || fail "plain writes carried FUA"
head -c 64k /dev/urandom | dd of="$dev" bs=4k seek=512 oflag=direct,dsync status=none
fua_sent=$(($(stat_of fua_writes) - fua))
[ "$fua_sent" -ge 16 ] || fail "16 O_DSYNC writes reached the device as $fua_sent FUA writes"
diag "FUA: $fua_sent FUA writes for 16 O_DSYNC writes"

# Write zeroes over more than one limit's worth is split at the limit.
head -c 384M /dev/urandom | dd of="$dev" bs=4M oflag=direct status=none
before=$(stat_of write_zeroes_commands)
len=$((wz_max + wz_max / 2))
[ "$len" -le $((384 << 20)) ] || len=$((384 << 20))
blkdiscard -z -o 0 -l "$len" "$dev" || fail "BLKZEROOUT failed"
n=$(($(stat_of write_zeroes_commands) - before))
want=$(((len + wz_max - 1) / wz_max))
[ "$n" -ge "$want" ] || fail "$n write-zeroes commands for $len bytes, limit $wz_max: expected at least $want"
cmp -n "$len" "$dev" /dev/zero || fail "zeroed range does not read as zeroes"
diag "write zeroes of $len bytes: $n commands (limit $wz_max bytes)"

# Discard: deallocated blocks read back as zeroes (DLFEAT).
off=$((8 << 20))
head -c 16M /dev/urandom | dd of="$dev" bs=1M seek=8 oflag=direct status=none
before=$(stat_of deallocate_commands)
blkdiscard -o "$off" -l $((16 << 20)) "$dev" || fail "discard failed"
[ "$(stat_of deallocate_commands)" -gt "$before" ] || fail "discard reached no Dataset Management"
dd if="$dev" bs=1M skip=$((off >> 20)) count=16 iflag=direct status=none | cmp -s - <(head -c 16M /dev/zero) ||
	fail "discarded range does not read as zeroes"

cfs_write "$DPUBLK_CFS/volumes/flush0/enable" 0
cfs_write "$DPUBLK_CFS/volumes/flush0/destroy" 1
rmdir "$DPUBLK_CFS/volumes/flush0"
detach_ssd f0
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
