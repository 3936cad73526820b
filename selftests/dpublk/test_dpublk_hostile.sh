#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A hostile accelerator breaks the protocol on one I/O completion in RATE
# (dpuemu --hostile RATE:SEED, or, as here, bit 1 of dpuemu's test-hook
# register in configuration space with RATE 200 and seed 1): completions with a wrong command ID or a
# stale generation, duplicates, a wrong submission queue ID, a submission
# queue head out of range, phase tags flipped early, undefined status code
# types, interrupt storms. While that goes on for HOSTILE_SECONDS (default
# 120), two fio jobs write and verify (crc32c) their own ranges of
# /dev/dpublk0. The driver must detect every anomaly, reset the controller
# and requeue the I/O: fio finishes with no error and every block it
# verified right, the controller is never failed, the kernel log stays
# clean. Prints how many anomalies of each kind were injected and how many
# resets the driver did.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

[ -z "${DPUBLK_TEST_BIND:-}" ] || skip "needs dpuemu"
log=${DPUBLK_RUNDIR:+$DPUBLK_RUNDIR/dpuemu.log}
[ -n "$log" ] && [ -r "$log" ] || skip "no dpuemu log to count anomalies in (not run by scripts/vm.sh)"
seconds=${HOSTILE_SECONDS:-120}
# The test-hook register: dword 1 of dpuemu's vendor-specific capability
# (Documentation/device-interface.rst, "Test hooks"); bit 1 is hostile mode.
HOOK_REGISTER=$((0x94))

unload_dpublk
dmesg_mark
start_line=$(wc -l <"$log")
load_dpublk_disk
pci=$(accelerator_pci) || fail "no accelerator function"
config=/sys/bus/pci/devices/$pci/config
[ "$(od -An -tx1 -j $((0x90)) -N1 "$config" | tr -d ' ')" = 09 ] ||
	skip "dpuemu without test hooks (no vendor capability at 0x90)"
set_hostile() { # set_hostile 0|1
	printf "\\x0$(($1 * 2))" | dd of="$config" bs=1 seek=$HOOK_REGISTER count=1 conv=notrunc status=none ||
		fail "cannot write the test-hook register"
}
set_hostile 1
on_exit "set_hostile 0"
sleep 1
tail -n +"$((start_line + 1))" "$log" | grep -q 'hostile mode on' || fail "dpuemu did not turn hostile mode on"
out=$TEST_TMP/fio.json
fio --name=hostile --filename=/dev/dpublk0 --ioengine=io_uring --direct=1 \
	--numjobs=2 --size=32M --offset_increment=32M --rw=randwrite --bs=4k --iodepth=16 \
	--verify=crc32c --verify_backlog=64 --verify_fatal=1 --verify_state_save=0 \
	--time_based --runtime="$seconds" --group_reporting=0 \
	--output-format=json --output="$out" >"$TEST_TMP/fio.log" 2>&1 ||
	{ sed 's/^/#   /' "$TEST_TMP/fio.log" | tail -20; fail "fio failed under the hostile device"; }
sed -n '/^{/,$p' "$out" >"$out.clean"
errors=$(jq '[.jobs[].error] | add' "$out.clean") || fail "cannot parse the fio report"
[ "$errors" = 0 ] || fail "fio reported error $errors"
written=$(jq '[.jobs[].write.io_bytes] | add' "$out.clean")
verified=$(jq '[.jobs[].read.io_bytes] | add' "$out.clean")
[ "$written" -gt 0 ] && [ "$verified" -gt 0 ] || fail "fio wrote $written and verified $verified bytes"
diag "fio: $written bytes written, $verified bytes read back and verified in ${seconds} s"
set_hostile 0

total=0
for kind in wrong-cid stale-generation duplicate wrong-sqid sq-head phase status irq-storm never-complete; do
	n=$(tail -n +"$((start_line + 1))" "$log" | grep -c "hostile: injected $kind " || true)
	total=$((total + n))
	diag "anomalies injected: $kind $n"
done
diag "anomalies injected in total: $total"
[ "$total" -gt 0 ] || fail "dpuemu injected no anomaly"
reset_line='scheduling a controller reset (#'
resets=$(dmesg_since_mark | awk -v p="$reset_line" 'index($0, p) { s = substr($0, index($0, p) + length(p)); n = s + 0 } END { print n + 0 }')
diag "controller resets (last logged number): ${resets:-0}"
[ "${resets:-0}" -gt 0 ] || fail "the driver never reset the controller"
dmesg_since_mark | grep -E 'device error' | sed 's/^/#   /' | tail -12
! dmesg_since_mark | grep -qE 'failing outstanding I/O|reset failed|giving up' || fail "the controller was failed"
[ -b /dev/dpublk0 ] || fail "/dev/dpublk0 went away"
timeout 120 rmmod dpublk || fail "rmmod failed after the hostile run"
dmesg_check_clean
exit $KSFT_PASS
