#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A snapshot exposed as its own read-only block device on request: its
# content is the snapshot's while the origin is overwritten, writes to it
# fail, and it goes away again; a snapshot exposed cannot be destroyed.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

unload_dpublk
dmesg_mark
load_dpublk_management
attach_ssd t0 0
origin=$(make_volume snaporigin t0 linear 64M)
head -c 32M /dev/urandom | dd of="$origin" bs=1M oflag=direct conv=fsync status=none || fail "write origin"
want=$(dd if="$origin" bs=1M count=32 iflag=direct status=none | sha256sum)
S=$DPUBLK_CFS/volumes/snaporigin/snapshots/s
mkdir "$S" || fail "snapshot"
[ "$(cat "$S/expose")" = 0 ] || fail "a new snapshot is exposed"
cfs_write "$S/expose" 1
read -r on disk <"$S/expose"
[ "$on" = 1 ] && [ -b "/dev/$disk" ] || fail "expose shows '$on $disk'"
[ "$(blockdev --getro "/dev/$disk")" = 1 ] || fail "/dev/$disk is writable"
head -c 16M /dev/urandom | dd of="$origin" bs=1M oflag=direct conv=fsync status=none || fail "overwrite origin"
[ "$(dd if="/dev/$disk" bs=1M count=32 iflag=direct status=none | sha256sum)" = "$want" ] ||
	fail "the exposed snapshot changed with its origin"
dd if=/dev/zero of="/dev/$disk" bs=4k count=1 oflag=direct status=none 2>/dev/null && fail "a write to the snapshot disk succeeded"
echo 1 >"$S/destroy" 2>/dev/null && fail "destroy of an exposed snapshot succeeded"
cfs_write "$S/expose" 0
[ ! -e "/dev/$disk" ] || fail "/dev/$disk still there"
cfs_write "$S/destroy" 1
rmdir "$S"
remove_volume snaporigin
detach_ssd t0
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
