#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The in-tree Rust null block driver (rnull; it stores no data in 7.3) powers
# on through its configfs and serves fio reads of the configured size.
. "$(dirname "$0")/test_common.sh"

ensure_configfs
modprobe rnull_mod || skip "rnull_mod module not available"
on_exit "modprobe -r rnull_mod"
dev_dir=$CONFIGFS/rnull/rnull_selftest
mkdir "$dev_dir" || fail "cannot create $dev_dir"
on_exit "rmdir $dev_dir"
echo 256 >"$dev_dir/size" || fail "cannot set size"
echo 4096 >"$dev_dir/blocksize" || fail "cannot set blocksize"
echo 1 >"$dev_dir/power" || fail "cannot power on rnull"
on_exit "echo 0 > $dev_dir/power"
udevadm settle 2>/dev/null || true
dev=/dev/rnull_selftest
[ -b "$dev" ] || dev=$(ls -d /dev/rnull* 2>/dev/null | head -1)
[ -b "$dev" ] || fail "no rnull block device appeared"
size=$(blockdev --getsize64 "$dev")
[ "$size" = $((256 << 20)) ] || fail "$dev has $size bytes, expected 256 MiB"
dmesg_mark
out=$TEST_TMP/fio.json
fio --name=read --filename="$dev" --ioengine=io_uring --direct=1 --rw=randread \
	--bs=4k --iodepth=32 --size=256M --io_size=64M --output-format=json >"$out" ||
	fail "fio read on $dev failed"
read_bytes=$(jq '.jobs[0].read.io_bytes' "$out")
[ "$read_bytes" = $((64 << 20)) ] || fail "fio read $read_bytes bytes, expected 64 MiB"
dmesg_check_clean
diag "rnull $dev: $read_bytes bytes read"
exit $KSFT_PASS
