#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# kill -9 of dpuemu while fio writes to an SSD function, then a restart:
# every write that completed before a completed flush reads back intact.
#
# QEMU 11.1's vfio-user client does not survive the death of its server (it
# aborts on an assertion or loses the function for good; see
# Documentation/testing.rst), so the test spans two VM runs over the same SSD
# images, driven by scripts/crash-test.sh:
#   DPUBLK_CRASH_PHASE=write   write and flush the pattern, start fio, kill -9
#   DPUBLK_CRASH_PHASE=verify  (dpuemu restarted on the same images) read back
# The pattern comes from $DPUBLK_IMAGES_DIR/pattern, made on the host.
. "$(dirname "$0")/test_common.sh"

[ -n "${DPUBLK_CRASH_PHASE:-}" ] || skip "run by scripts/crash-test.sh (two VM runs)"
pattern=$DPUBLK_IMAGES_DIR/pattern
[ -f "$pattern" ] || fail "no pattern file $pattern"
dev=$(dpublk_ssd_devices | head -1)
[ -n "$dev" ] || fail "no local SSD function"
pattern_mib=$(($(stat -c %s "$pattern") >> 20))

case $DPUBLK_CRASH_PHASE in
write)
	# fsync on the block device sends an NVMe Flush after the writes.
	dd if="$pattern" of="$dev" bs=1M seek=16 oflag=direct conv=fsync status=none ||
		fail "writing the flushed pattern failed"
	diag "pattern of $pattern_mib MiB written and flushed to $dev; starting fio, then kill -9"
	fio --name=inflight --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite \
		--bs=4k --iodepth=32 --offset=64M --size=64M --time_based --runtime=60 \
		>"$TEST_TMP/fio.out" 2>&1 &
	fio_pid=$!
	sleep 3
	kill -0 $fio_pid || fail "fio ended before the crash"
	# QEMU may go down with the emulator; then this run ends here.
	host_request dpuemu-kill >/dev/null
	for _ in $(seq 1 60); do kill -0 $fio_pid 2>/dev/null || break; sleep 1; done
	if kill -0 $fio_pid 2>/dev/null; then
		kill -9 $fio_pid
		fail "fio still running 60 s after dpuemu died"
	fi
	wait $fio_pid && fail "fio saw no error although the device died under it"
	diag "fio failed as it should once dpuemu was gone"
	;;
verify)
	dd if="$dev" of="$TEST_TMP/readback" bs=1M skip=16 count="$pattern_mib" iflag=direct status=none ||
		fail "reading back after the restart failed"
	cmp -s "$pattern" "$TEST_TMP/readback" || fail "flushed data lost or changed across kill -9"
	diag "$pattern_mib MiB flushed before kill -9 read back intact from $dev after the restart"
	;;
*) fail "unknown DPUBLK_CRASH_PHASE '$DPUBLK_CRASH_PHASE'" ;;
esac
exit $KSFT_PASS
