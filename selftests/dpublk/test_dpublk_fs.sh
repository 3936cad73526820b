#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# ext4 and xfs on /dev/dpublk0: write files, drop caches, checksums match.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

unload_dpublk
dmesg_mark
load_dpublk_disk
mnt="$TEST_TMP/mnt"
mkdir -p "$mnt"
on_exit "umount '$mnt' 2>/dev/null; rmmod dpublk 2>/dev/null"
mb=${DPUBLK_FS_MB:-256}
for fs in ext4 xfs; do
	"mkfs.$fs" -q $([ $fs = xfs ] && echo -f) /dev/dpublk0 >/dev/null || fail "mkfs.$fs"
	mount /dev/dpublk0 "$mnt" || fail "mount $fs"
	for i in $(seq 1 8); do
		head -c $((mb / 8))M /dev/urandom >"$mnt/file$i" || fail "write file$i on $fs"
	done
	(cd "$mnt" && sha256sum file* >"$TEST_TMP/sums") || fail "checksum on $fs"
	umount "$mnt" || fail "umount $fs"
	echo 3 >/proc/sys/vm/drop_caches
	mount /dev/dpublk0 "$mnt" || fail "remount $fs"
	(cd "$mnt" && sha256sum -c --quiet "$TEST_TMP/sums") || fail "checksums differ on $fs"
	umount "$mnt" || fail "umount $fs"
	diag "$fs: $mb MiB of files read back intact"
done
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
