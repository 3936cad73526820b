#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# An exposed snapshot's disk is read-only from the moment it is visible
# (issue 14: it used to be made read-only only after device_add_disk, which
# also scans the partition table, so for milliseconds it was a writable
# disk). One process exposes and hides a snapshot DPUBLK_SNAPSHOT_RO_CYCLES
# (500) times; a watcher looks at every dpublk disk but the origin's as
# fast as it can: its ro flag and BLKROGET must read 1 and a write to it
# must fail with EPERM. The snapshot's data stays what it was.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

CYCLES=${DPUBLK_SNAPSHOT_RO_CYCLES:-500}
unload_dpublk
command -v python3 >/dev/null || fail "python3 is missing"
dmesg_mark
load_dpublk_management
attach_ssd o0 0
origin=$(make_volume roorigin o0 linear 40M)
head -c 8M /dev/urandom | dd of="$origin" bs=1M oflag=direct conv=fsync status=none || fail "write origin"
want=$(disk_sum "$origin" 8)
S=$DPUBLK_CFS/volumes/roorigin/snapshots/s
mkdir "$S" || fail "snapshot"
started=$(date +%s)
python3 - "$S/expose" "${origin#/dev/}" "$CYCLES" "$TEST_TMP/stop" >"$TEST_TMP/ro.out" 2>&1 <<'PY'
import errno
import fcntl
import os
import struct
import sys

BLKROGET = 0x125E  # _IO(0x12, 94)
GONE = (errno.ENOENT, errno.ENXIO, errno.ENODEV)


def gone(disk):
    """True when the disk was hidden again while we looked at it."""
    return not os.path.exists(f"/sys/block/{disk}")

expose, origin, cycles, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


def watch():
    """Looks at every dpublk disk but the origin: the snapshot's."""
    looks = bad = 0
    while not os.path.exists(stop):
        for disk in os.listdir("/sys/block"):
            if not disk.startswith("dpublk") or disk == origin:
                continue
            try:
                with open(f"/sys/block/{disk}/ro") as f:
                    ro = f.read().strip()
            except OSError:
                continue  # gone again
            looks += 1
            if ro != "1":
                bad += 1
                print(f"FAIL: /sys/block/{disk}/ro read {ro!r}", flush=True)
            # Linux lets a read-only disk be opened for writing (only
            # in-kernel opens by path refuse it); what must fail is the
            # write itself (EPERM), and BLKROGET must say read-only.
            try:
                fd = os.open(f"/dev/{disk}", os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno not in GONE + (errno.EACCES, errno.EROFS):
                    bad += 1
                    print(f"FAIL: opening /dev/{disk} for writing: {e}", flush=True)
                continue
            try:
                flag = struct.unpack("i", fcntl.ioctl(fd, BLKROGET, bytes(4)))[0]
                if flag != 1:
                    bad += 1
                    print(f"FAIL: BLKROGET on /dev/{disk} returned {flag}", flush=True)
                os.pwrite(fd, bytes(4096), 0)
                bad += 1
                print(f"FAIL: a write to /dev/{disk} was accepted", flush=True)
            except OSError as e:
                if e.errno != errno.EPERM and not (e.errno in GONE + (errno.EIO,) and gone(disk)):
                    bad += 1
                    print(f"FAIL: writing to /dev/{disk}: {e} (want EPERM)", flush=True)
            finally:
                os.close(fd)
    print(f"watcher: {looks} looks at the snapshot disk, {bad} writable")
    return looks, bad


def write(value):
    fd = os.open(expose, os.O_WRONLY)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


pid = os.fork()
if pid == 0:
    looks, bad = watch()
    os._exit(2 if looks == 0 else 1 if bad else 0)
failed = 0
for i in range(cycles):
    for value in (b"1", b"0"):
        for attempt in range(50):
            try:
                write(value)
                break
            except OSError as e:
                # EBUSY: udev or the watcher has the disk open right now.
                if e.errno != errno.EBUSY:
                    print(f"FAIL: expose {value.decode()}: {e}", flush=True)
                    failed += 1
                    break
open(stop, "w").close()
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
if code == 2:
    print("FAIL: the watcher never saw the snapshot disk")
print(f"exposer: {cycles} cycles, {failed} failures")
sys.exit(1 if failed or code else 0)
PY
rc=$?
sed 's/^/#   /' "$TEST_TMP/ro.out" | tail -20
[ "$rc" = 0 ] || fail "a snapshot disk was writable, or exposing failed (see above)"
diag "$CYCLES expose/hide cycles in $(($(date +%s) - started)) s; the snapshot disk was read-only whenever seen"
cfs_write "$S/expose" 1
read -r _ disk <"$S/expose"
[ "$(disk_sum "/dev/$disk" 8)" = "$want" ] || fail "the snapshot's data changed"
cfs_write_busy "$S/expose" 0
cfs_write "$S/destroy" 1
rmdir "$S"
remove_volume roorigin
detach_ssd o0
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
