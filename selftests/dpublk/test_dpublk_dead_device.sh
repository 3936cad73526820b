#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The accelerator's firmware hangs while fio runs random reads and writes
# with verify on /dev/dpublk0 (dpuemu's hang test hook, a register in its
# configuration space: the function still answers on the bus, but acts on
# nothing and does not confirm CC.EN = 0). The timed-out command is
# aborted, the Abort times out too, the controller reset that follows gets
# no CSTS.RDY = 0 within CAP.TO, so the driver fails the controller: it
# clears bus mastering, keeps the rings and PRP lists, fails the
# outstanding I/O, and says so in dmesg. Then a canary process fills a large
# part of guest memory (the pages fio's buffers went back to among them)
# with a checksummed pattern, the device is thawed and finishes the commands
# it held, and the canary finds every page intact: nothing was written
# after the driver let go. The device, back to life, confirms the stop at
# rmmod, and the module binds it again afterwards.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

[ -z "${DPUBLK_TEST_BIND:-}" ] || skip "needs dpuemu"
# The hang register: dword 4 of dpuemu's vendor-specific capability
# (Documentation/device-interface.rst, "Test hooks").
HANG_REGISTER=$((0x94))

unload_dpublk
dmesg_mark
load_dpublk_disk
short_io_timeout 5000
pci=$(accelerator_pci) || fail "no accelerator function"
config=/sys/bus/pci/devices/$pci/config
[ "$(od -An -tx1 -j $((0x90)) -N1 "$config" | tr -d ' ')" = 09 ] ||
	skip "dpuemu without the hang test hook (no vendor capability at 0x90)"
set_hang() { # set_hang 0|1: writes the low byte of the hang register
	printf "\\x0$1" | dd of="$config" bs=1 seek=$HANG_REGISTER count=1 conv=notrunc status=none ||
		fail "cannot write the hang register"
}
dpuemu_log=${DPUBLK_RUNDIR:+$DPUBLK_RUNDIR/dpuemu.log}
log_lines_before=$( [ -n "$dpuemu_log" ] && wc -l <"$dpuemu_log" || echo 0)

fio --name=busy --filename=/dev/dpublk0 --ioengine=io_uring --direct=1 --allow_file_create=0 \
	--rw=randrw --bs=4k --iodepth=32 --size=64M --verify=crc32c --verify_fatal=1 \
	--time_based --runtime=120 >"$TEST_TMP/fio.out" 2>&1 &
fio_pid=$!
on_exit "kill -9 $fio_pid 2>/dev/null"
wait_disk_busy $fio_pid
set_hang 1
on_exit "set_hang 0"
hung=$(date +%s)
for _ in $(seq 1 150); do kill -0 $fio_pid 2>/dev/null || break; sleep 1; done
kill -0 $fio_pid 2>/dev/null && fail "fio still running $(($(date +%s) - hung)) s after the device hung"
took=$(($(date +%s) - hung))
wait $fio_pid && fail "fio reported no error although the device hung"
grep -q 'verify: bad' "$TEST_TMP/fio.out" && fail "fio read wrong data before the failure"
diag "fio failed $took s after the device hung"
dmesg_since_mark | grep -q 'timed out' || fail "no timeout reported by the driver"
dmesg_since_mark | grep -q 'controller reset failed' || fail "no failed controller reset reported"
dmesg_since_mark | grep -q 'not confirmed stopped' ||
	fail "the driver did not say the device never confirmed it stopped"
# New I/O fails at once now: the failed reset marked the disk dead (its
# size drops to 0), so a read returns no data, by an error or at once as
# the end of the device.
got=$(timeout 30 dd if=/dev/dpublk0 bs=4k count=1 iflag=direct status=none 2>/dev/null | wc -c)
[ "$got" = 0 ] || fail "a read from the dead device returned $got bytes"

# The canary: half of the available memory, every 4 KiB page filled with a
# pattern naming the page and its CRC32 kept aside; checked again after the
# device came back.
canary_mb=$(awk '/MemAvailable/ { m = int($2 / 1024 / 2); print (m > 512 ? 512 : m) }' /proc/meminfo)
python3 - "$canary_mb" "$TEST_TMP" >"$TEST_TMP/canary.out" 2>&1 <<'EOF' &
import mmap, os, sys, time, zlib
mb, tmp = int(sys.argv[1]), sys.argv[2]
page, pages = 4096, int(sys.argv[1]) * 256
mem = mmap.mmap(-1, pages * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
crcs = []
for i in range(pages):
    stamp = (0xC0FFEE00_00000000 | i).to_bytes(8, "little")
    data = stamp * (page // 8)
    mem[i * page:(i + 1) * page] = data
    crcs.append(zlib.crc32(data))
open(os.path.join(tmp, "canary.ready"), "w").close()
while not os.path.exists(os.path.join(tmp, "canary.check")):
    time.sleep(0.2)
bad = [i for i in range(pages) if zlib.crc32(mem[i * page:(i + 1) * page]) != crcs[i]]
print(f"canary: {pages} pages ({mb} MiB) checked, {len(bad)} changed")
for i in bad[:5]:
    print(f"canary: page {i} now starts {mem[i * page:i * page + 32].hex()}")
sys.exit(1 if bad else 0)
EOF
canary_pid=$!
on_exit "kill -9 $canary_pid 2>/dev/null"
for _ in $(seq 1 600); do
	[ -e "$TEST_TMP/canary.ready" ] && break
	kill -0 $canary_pid 2>/dev/null || { cat "$TEST_TMP/canary.out"; fail "the canary died while filling memory"; }
	sleep 0.5
done
[ -e "$TEST_TMP/canary.ready" ] || fail "the canary did not fill its memory within 5 minutes"
diag "canary: $canary_mb MiB filled and checksummed"

# Thaw: the device finishes the commands it held, without DMA since bus
# mastering is off, and acts on the CC.EN = 0 it was given.
set_hang 0
sleep 5
touch "$TEST_TMP/canary.check"
wait $canary_pid
canary_rc=$?
sed 's/^/#   /' "$TEST_TMP/canary.out"
[ "$canary_rc" = 0 ] || fail "guest memory changed after the driver released the device"
if [ -n "$dpuemu_log" ]; then
	tail -n +"$((log_lines_before + 1))" "$dpuemu_log" | grep -E 'bus mastering|hang|dropped without DMA' |
		head -12 | sed 's/^/#   dpuemu: /'
	dropped=$(tail -n +"$((log_lines_before + 1))" "$dpuemu_log" | grep -c 'dropped without DMA' || true)
	diag "dpuemu dropped $dropped held commands without DMA after the thaw"
	[ "$dropped" -gt 0 ] || fail "dpuemu held no command during the hang: the test proved nothing"
fi

timeout 120 rmmod dpublk || fail "rmmod hung or failed with the controller failed"
[ ! -e /dev/dpublk0 ] || fail "/dev/dpublk0 still there after rmmod"
dmesg_since_mark | grep -E 'dpublk|timed out' | sed 's/^/#   /' | tail -14
# The device came back: this time the release confirmed it stopped, so
# nothing was leaked; and the module binds it again.
dmesg_since_mark | grep -q 'leaked .* bytes of DMA memory' &&
	fail "DMA memory leaked although the device confirmed it stopped at release"
timeout 60 insmod "$DPUBLK_MODULE" || fail "insmod after the dead device failed"
for _ in $(seq 1 100); do [ -b /dev/dpublk0 ] && break; sleep 0.1; done
[ -b /dev/dpublk0 ] || fail "the thawed device got no disk after the reload"
dpublk_fio_verify /dev/dpublk0 --size=8M
timeout 60 rmmod dpublk || fail "rmmod after the reload failed"
dmesg_check_clean
exit $KSFT_PASS
