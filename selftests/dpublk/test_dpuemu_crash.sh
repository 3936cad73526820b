#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# kill -9 of dpuemu while fio writes to an SSD function, then a restart:
# every write that completed before a completed flush reads back intact.
. "$(dirname "$0")/test_common.sh"

dev=$(dpublk_ssd_devices | head -1)
[ -n "$dev" ] || skip "no local SSD functions"
ctrl=$(basename "$(dirname "$(readlink -f "/sys/block/$(basename "$dev")")")")

# 1. Data written and flushed before the crash (fsync on the block device
#    sends an NVMe Flush).
head -c 8M /dev/urandom >"$TEST_TMP/flushed"
dd if="$TEST_TMP/flushed" of="$dev" bs=1M seek=16 oflag=direct conv=fsync status=none ||
	fail "writing the flushed pattern failed"
# 2. Unflushed writes in flight when the emulator dies (their fate is open).
fio --name=inflight --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite \
	--bs=4k --iodepth=32 --offset=64M --size=64M --time_based --runtime=60 \
	>"$TEST_TMP/fio.out" 2>&1 &
fio_pid=$!
sleep 3
host_request dpuemu-kill >/dev/null
# The in-flight I/O must fail within the nvme timeout, not hang.
for _ in $(seq 1 120); do kill -0 $fio_pid 2>/dev/null || break; sleep 1; done
if kill -0 $fio_pid 2>/dev/null; then
	kill -9 $fio_pid
	fail "fio still running 120 s after dpuemu died"
fi
wait $fio_pid && diag "note: fio ended without an error"

# 3. Restart the emulator and plug its functions in again.
for id in $(ls "$DPUBLK_RUNDIR/devices" | sed 's/\.json$//'); do
	host_request device-del "$id" >/dev/null
done
# Wait for the guest to let go of the dead functions.
for _ in $(seq 1 60); do [ -z "$(lspci -n -d 1df5:)" ] && break; sleep 1; done
[ -z "$(lspci -n -d 1df5:)" ] || fail "functions still present after unplug: $(lspci -n -d 1df5: | tr '\n' ' ')"
host_request dpuemu-start >/dev/null
for id in $(ls "$DPUBLK_RUNDIR/devices" | sed 's/\.json$//'); do
	host_request device-add "$id" >/dev/null
done
for _ in $(seq 1 60); do [ -n "$(dpublk_ssd_devices)" ] && break; sleep 1; done
dev=$(dpublk_ssd_devices | head -1)
[ -n "$dev" ] || fail "no SSD namespace after the restart"
udevadm settle 2>/dev/null || true

# 4. The flushed pattern is intact.
dd if="$dev" of="$TEST_TMP/readback" bs=1M skip=16 count=8 iflag=direct status=none ||
	fail "reading back after the restart failed"
cmp -s "$TEST_TMP/flushed" "$TEST_TMP/readback" || fail "flushed data lost or changed across kill -9"
diag "8 MiB flushed before kill -9 read back intact from $dev after restart"
exit $KSFT_PASS
