#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# fio verify (crc32c) on /dev/dpublk0: randwrite then verify at several block
# sizes and depths, four jobs on disjoint ranges, then an independent dd
# pattern check. DPUBLK_FIO_JOB_MB (16) is each job's range: make check's
# sample uses less.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

unload_dpublk
dmesg_mark
load_dpublk_disk
on_exit unload_dpublk
dev=/dev/dpublk0
size=$(blockdev --getsize64 $dev)
[ "$size" -ge $((256 << 20)) ] || skip "dpublk0 is smaller than 256 MiB"
job_mb=${DPUBLK_FIO_JOB_MB:-16}
[[ $job_mb =~ ^[1-9][0-9]*$ ]] && [ "$job_mb" -le 16 ] || fail "DPUBLK_FIO_JOB_MB must be 1..16"
for bs in 4k 16k 128k 1M; do
	for depth in 1 64; do
		# Four jobs, each on its own range.
		dpublk_fio_verify $dev --bs=$bs --iodepth=$depth --numjobs=4 --size=${job_mb}M \
			--offset_increment=16M --offset=0
	done
done
head -c 4M /dev/urandom >"$TEST_TMP/pattern"
dd if="$TEST_TMP/pattern" of=$dev bs=1M seek=128 oflag=direct conv=fsync status=none || fail "dd to $dev"
echo 3 >/proc/sys/vm/drop_caches
dd if=$dev of="$TEST_TMP/readback" bs=1M skip=128 count=4 iflag=direct status=none || fail "dd from $dev"
cmp -s "$TEST_TMP/pattern" "$TEST_TMP/readback" || fail "pattern read back from $dev differs"
unload_dpublk
dmesg_check_clean
diag "iommu=${DPUBLK_IOMMU:-0}: fio verify at 4k..1M, depth 1 and 64 (4 x $job_mb MiB), and dd pattern passed"
exit $KSFT_PASS
