#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A memory-backed null_blk, set up through its configfs, passes fio verify:
# proves the VM's blk-mq, io_uring and fio setup that later tests rely on.
. "$(dirname "$0")/test_common.sh"

ensure_configfs
modprobe null_blk nr_devices=0 || skip "null_blk module not available"
on_exit "modprobe -r null_blk"
dev_dir=$CONFIGFS/nullb/nullb_selftest
mkdir "$dev_dir" || fail "cannot create $dev_dir"
on_exit "rmdir $dev_dir"
echo 512 >"$dev_dir/size"          # MiB
echo 4096 >"$dev_dir/blocksize"
echo 1 >"$dev_dir/memory_backed"
echo 1 >"$dev_dir/power" || fail "cannot power on null_blk"
on_exit "echo 0 > $dev_dir/power"
index=$(cat "$dev_dir/index")
udevadm settle 2>/dev/null || true
# Newer kernels name configfs-made devices after their directory.
dev=/dev/$(basename "$dev_dir")
[ -b "$dev" ] || dev=/dev/nullb$index
[ -b "$dev" ] || fail "neither /dev/$(basename "$dev_dir") nor $dev appeared"
dmesg_mark
fio_verify "$dev" --size=256M --numjobs=1
# And the data really is stored: a pattern written with dd reads back.
head -c 1M /dev/urandom >"$TEST_TMP/pattern"
dd if="$TEST_TMP/pattern" of="$dev" bs=1M seek=300 oflag=direct status=none || fail "dd write failed"
dd if="$dev" of="$TEST_TMP/readback" bs=1M skip=300 count=1 iflag=direct status=none || fail "dd read failed"
cmp -s "$TEST_TMP/pattern" "$TEST_TMP/readback" || fail "pattern read back differs"
dmesg_check_clean
exit $KSFT_PASS
