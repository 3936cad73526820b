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
#
# With HOSTILE_ANOMALIES=N (make hostile, test_dpublk_hostile_long.sh)
# fio runs in rounds of HOSTILE_SECONDS until dpuemu injected N anomalies
# (at most HOSTILE_LIMIT seconds, default 7200): every round verifies
# every block it wrote, every completion kind must have been injected, and
# fewer than N in the limit fails. Run dpuemu with --hostile RATE@hook to
# raise the rate. HOSTILE_REQUIRE lists the kinds such a long run must
# have injected (default the eight completion kinds above); make hostile's
# lost-command phase runs dpuemu with --hostile RATE:SEED:never-complete@hook
# and HOSTILE_REQUIRE=never-complete, and sets HOSTILE_IO_TIMEOUT_MS so each
# lost command is timed out, aborted and reset in seconds.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

[ -z "${DPUBLK_TEST_BIND:-}" ] || skip "needs dpuemu"
log=${DPUBLK_RUNDIR:+$DPUBLK_RUNDIR/dpuemu.log}
[ -n "$log" ] && [ -r "$log" ] || skip "no dpuemu log to count anomalies in (not run by scripts/vm.sh)"
seconds=${HOSTILE_SECONDS:-120}
required=${HOSTILE_REQUIRE:-wrong-cid stale-generation duplicate wrong-sqid sq-head phase status irq-storm}
io_timeout_ms=${HOSTILE_IO_TIMEOUT_MS:-}
[ -z "$io_timeout_ms" ] || [[ $io_timeout_ms =~ ^[1-9][0-9]{2,5}$ ]] ||
	fail "HOSTILE_IO_TIMEOUT_MS must be 100..999999, not '$io_timeout_ms'"
# The test-hook register: dword 1 of dpuemu's vendor-specific capability
# (Documentation/device-interface.rst, "Test hooks"); bit 1 is hostile mode.
HOOK_REGISTER=$((0x94))

unload_dpublk
dmesg_mark
start_line=$(wc -l <"$log")
load_dpublk_disk
[ -z "$io_timeout_ms" ] || short_io_timeout "$io_timeout_ms"
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
target=${HOSTILE_ANOMALIES:-0}
limit=${HOSTILE_LIMIT:-7200}
injected_total() { tail -n +"$((start_line + 1))" "$log" | grep -c 'hostile: injected ' || true; }
t0=$(date +%s) round=0 written=0 verified=0
while :; do
	round=$((round + 1))
	out=$TEST_TMP/fio.json
	fio --name=hostile --filename=/dev/dpublk0 --ioengine=io_uring --direct=1 \
		--numjobs=2 --size=32M --offset_increment=32M --rw=randwrite --bs=4k --iodepth=16 \
		--verify=crc32c --verify_backlog=64 --verify_fatal=1 --verify_state_save=0 \
		--time_based --runtime="$seconds" --group_reporting=0 \
		--output-format=json --output="$out" >"$TEST_TMP/fio.log" 2>&1 ||
		{ sed 's/^/#   /' "$TEST_TMP/fio.log" | tail -20; fail "fio failed under the hostile device (round $round)"; }
	sed -n '/^{/,$p' "$out" >"$out.clean"
	errors=$(jq '[.jobs[].error] | add' "$out.clean") || fail "cannot parse the fio report"
	[ "$errors" = 0 ] || fail "fio reported error $errors (round $round)"
	w=$(jq '[.jobs[].write.io_bytes] | add' "$out.clean")
	r=$(jq '[.jobs[].read.io_bytes] | add' "$out.clean")
	[ "$w" -gt 0 ] && [ "$r" -gt 0 ] || fail "fio wrote $w and verified $r bytes (round $round)"
	written=$((written + w)) verified=$((verified + r))
	now=$(injected_total)
	[ "$target" -gt 0 ] && diag "round $round: $now anomalies so far, $(($(date +%s) - t0)) s"
	[ "$target" -gt 0 ] && [ "$now" -lt "$target" ] && [ $(($(date +%s) - t0)) -lt "$limit" ] || break
done
diag "fio: $written bytes written, $verified bytes read back and verified in $round rounds of ${seconds} s"
set_hostile 0

total=0
for kind in wrong-cid stale-generation duplicate wrong-sqid sq-head phase status irq-storm never-complete identify vendor-payload; do
	n=$(tail -n +"$((start_line + 1))" "$log" | grep -c "hostile: injected $kind " || true)
	total=$((total + n))
	diag "anomalies injected: $kind $n"
	[[ " $required " != *" $kind "* ]] || [ "$target" = 0 ] || [ "$n" -gt 0 ] ||
		fail "no $kind anomaly in the long run"
done
diag "anomalies injected in total: $total"
[ "$total" -gt 0 ] || fail "dpuemu injected no anomaly"
[ "$total" -ge "$target" ] || fail "only $total of $target anomalies within ${limit} s"
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
