#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A lost command is recovered by a controller reset, with no data lost:
# while fio writes a verifiable pattern to /dev/dpublk0, dpuemu drops one
# I/O command (host agent: dpuemu-lose-io, dpuemu's SIGUSR1 test hook). The
# driver times the command out and aborts it (dpuemu never aborts), times it
# out again and resets the controller: disable, requeue what was
# outstanding, enable, recreate the queues. Four more fio jobs keep writing
# and verifying other ranges throughout (a job that waits for the lost
# command stalls, the others go on), so the reset usually catches other
# requests in flight besides the lost one. Every job must finish
# without an error and verify what it wrote, a second pass must read the
# first pattern back, the disk must stay, the controller must not be
# failed, and the kernel log must stay clean. DPUBLK_RESET_JOB_MB (64) is
# the verified job's size, DPUBLK_RESET_BUSY_SECONDS (40) how long the
# other jobs write and DPUBLK_RESET_IO_TIMEOUT_MS (5000) the request
# timeout (twice it passes before the reset): make check's sample shortens
# all three.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"

[ -z "${DPUBLK_TEST_BIND:-}" ] || skip "needs dpuemu"
[ -n "${DPUBLK_RUNDIR:-}" ] || skip "no host agent (not run by scripts/vm.sh)"
unload_dpublk
dmesg_mark
load_dpublk_disk
job_mb=${DPUBLK_RESET_JOB_MB:-64}
busy_seconds=${DPUBLK_RESET_BUSY_SECONDS:-40}
io_timeout_ms=${DPUBLK_RESET_IO_TIMEOUT_MS:-5000}
[[ $io_timeout_ms =~ ^[1-9][0-9]*$ ]] && [ "$io_timeout_ms" -ge 1000 ] ||
	fail "DPUBLK_RESET_IO_TIMEOUT_MS must be a number of at least 1000"
short_io_timeout "$io_timeout_ms"
[[ $job_mb =~ ^[1-9][0-9]*$ ]] && [ "$job_mb" -le 64 ] || fail "DPUBLK_RESET_JOB_MB must be 1..64"
[[ $busy_seconds =~ ^[1-9][0-9]*$ ]] || fail "DPUBLK_RESET_BUSY_SECONDS must be a positive number"

job=(--name=reset --filename=/dev/dpublk0 --ioengine=io_uring --direct=1
	--rw=randwrite --bs=4k --iodepth=16 --size=${job_mb}M --verify=crc32c
	--verify_fatal=1 --verify_state_save=0 --randseed=4242)
out=$TEST_TMP/fio.json
fio "${job[@]}" --do_verify=1 --output-format=json --output="$out" >"$TEST_TMP/fio.log" 2>&1 &
fio_pid=$!
on_exit "kill -9 $fio_pid 2>/dev/null"
busy=$TEST_TMP/busy.json
fio --name=busy --filename=/dev/dpublk0 --ioengine=io_uring --direct=1 --numjobs=4 \
	--offset=64M --size=32M --offset_increment=32M --group_reporting=0 \
	--rw=randwrite --bs=4k --iodepth=16 --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
	--verify_state_save=0 --time_based --runtime=$busy_seconds --output-format=json --output="$busy" \
	>"$TEST_TMP/busy.log" 2>&1 &
busy_pid=$!
on_exit "kill -9 $busy_pid 2>/dev/null"
wait_disk_busy $fio_pid
host_request dpuemu-lose-io >/dev/null
lost=$(date +%s)
# Two timeouts (io_timeout_ms each: before and after the abort), then the
# reset.
for i in $(seq 1 300); do
	kill -0 $fio_pid 2>/dev/null || break
	[ $((i % 10)) = 0 ] && diag "$i s: requests in flight (reads writes): $(cat /sys/block/dpublk0/inflight)"
	sleep 1
done
kill -0 $fio_pid 2>/dev/null && fail "fio still running $(($(date +%s) - lost)) s after the command was lost"
wait $fio_pid || { sed 's/^/#   /' "$TEST_TMP/fio.log" | tail -20; fail "fio failed across the reset"; }
diag "fio finished $(($(date +%s) - lost)) s after the command was lost"
sed -n '/^{/,$p' "$out" >"$out.clean"
errors=$(jq '[.jobs[].error] | add' "$out.clean") || fail "cannot parse the fio report"
[ "$errors" = 0 ] || fail "fio reported error $errors across the reset"
written=$(jq '[.jobs[].write.io_bytes] | add' "$out.clean")
verified=$(jq '[.jobs[].read.io_bytes] | add' "$out.clean")
[ "$written" -gt 0 ] && [ "$verified" -ge "$written" ] ||
	fail "fio wrote $written bytes but verified only $verified"
diag "fio wrote $written bytes and verified $verified across the reset"
for _ in $(seq 1 200); do kill -0 $busy_pid 2>/dev/null || break; sleep 1; done
kill -0 $busy_pid 2>/dev/null && fail "the busy fio jobs still run"
wait $busy_pid || { sed 's/^/#   /' "$TEST_TMP/busy.log" | tail -20; fail "a busy fio job failed across the reset"; }
sed -n '/^{/,$p' "$busy" >"$busy.clean"
errors=$(jq '[.jobs[].error] | add' "$busy.clean") || fail "cannot parse the busy jobs' fio report"
[ "$errors" = 0 ] || fail "a busy fio job reported error $errors"
jobs=$(jq '[.jobs[] | select(.write.io_bytes > 0 and .read.io_bytes > 0)] | length' "$busy.clean")
[ "$jobs" = 4 ] || fail "only $jobs of 4 busy jobs wrote and verified data"
written=$(jq '[.jobs[].write.io_bytes] | add' "$busy.clean")
verified=$(jq '[.jobs[].read.io_bytes] | add' "$busy.clean")
diag "busy jobs: $written bytes written, $verified verified while the reset ran"

log=$(dmesg_since_mark)
grep -q 'timed out, aborting' <<<"$log" || fail "the lost command was not timed out and aborted"
grep -q 'resetting the controller' <<<"$log" || fail "no controller reset"
requeued=$(sed -n 's/.*controller reset done: \([0-9]*\) requests requeued.*/\1/p' <<<"$log" | tail -1)
[ -n "$requeued" ] || fail "the controller reset did not complete"
[ "$requeued" -ge 1 ] || fail "the reset requeued nothing, yet the lost command was outstanding"
diag "controller reset requeued $requeued requests"
! grep -qE 'failing outstanding I/O|reset failed|giving up' <<<"$log" || fail "the controller was failed"
if [ -r "$DPUBLK_RUNDIR/dpuemu.log" ]; then
	grep -q 'lost (test hook)' "$DPUBLK_RUNDIR/dpuemu.log" || fail "dpuemu did not lose a command"
fi

# The disk stayed and works: the pattern reads back in a second pass.
[ -b /dev/dpublk0 ] || fail "/dev/dpublk0 went away"
fio "${job[@]}" --verify_only --output-format=json --output="$out" >"$TEST_TMP/fio.log" 2>&1 ||
	{ sed 's/^/#   /' "$TEST_TMP/fio.log" | tail -20; fail "the pattern does not read back after the reset"; }
diag "pattern read back after the reset"
dmesg_since_mark | grep -E 'dpublk [0-9a-f]{4}:' | sed 's/^/#   /' | tail -10
timeout 120 rmmod dpublk || fail "rmmod failed after the reset"
[ ! -e /dev/dpublk0 ] || fail "/dev/dpublk0 still there after rmmod"
dmesg_check_clean
exit $KSFT_PASS
