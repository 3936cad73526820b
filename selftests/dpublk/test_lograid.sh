#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Log-RAID (layout lograid over ec_k + ec_m SSDs; Documentation/lograid.rst):
# fio verify of random 64k and 4k writes over most of a 4 + 2 volume, then
# again while one SSD fails completely and a second one vanishes mid-run:
# every block reads back (0 mismatches) with two SSDs lost. The volume's
# state is not checked: dpuemu does not report a lograid volume degraded
# yet. lograid with ec_m = 1 (3 + 1 over 4 SSDs) gets the plain verify.
# Needs 6 SSDs.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"
. "$(dirname "$0")/protection_common.sh"

unload_dpublk
dmesg_mark
protection_setup 6

dev=$(make_volume lograid s0,s1,s2,s3,s4,s5 lograid 64M ec_k=4 ec_m=2)
diag "lograid 4+2 on $dev"
# Overwrites of the same region make the log wrap and GC run.
fio_start "$dev" --size=48M
fio_finish
fio_start "$dev" --size=48M --bs=4k --number_ios=4096
fio_finish
fio_start "$dev" --size=48M
fio_wait_busy "$dev"
ssd_fault s1 fail_all
fio_running || fail "fio finished before the first failure"
ssd_fault s4 disappear
fio_finish
remove_volume lograid
ssd_fault s1 clear
ssd_fault s4 clear

dev=$(make_volume lograid31 s0,s1,s2,s3 lograid 32M ec_k=3 ec_m=1)
diag "lograid 3+1 on $dev"
fio_start "$dev" --size=24M
fio_finish
remove_volume lograid31

# Refused: the SSD count must be ec_k + ec_m.
v=$DPUBLK_CFS/volumes/badlog
mkdir "$v" || fail "mkdir volumes/badlog"
cfs_write "$v/ssds" s0,s1,s2,s3,s4
cfs_write "$v/layout" lograid
cfs_write "$v/size" 16M
echo 1 2>/dev/null >"$v/enable" && fail "lograid over 5 SSDs with ec_k=4 ec_m=2 was enabled"
rmdir "$v" || fail "rmdir volumes/badlog"
dmesg_check_clean
exit $KSFT_PASS
