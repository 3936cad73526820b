#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dpublk-timeout: 900
# A scrub is a background operation of the accelerator: controller resets
# and unbind never wait behind it, and it keeps its result across them.
# Needs 6 SSDs and dpuemu (its test-hook register and its log).
#
# 1. A raid6 volume over six SSDs holds reference data, part of it decayed
#    on one SSD (fault rot); an uninterrupted scrub check counts N
#    mismatching sectors.
# 2. dpuemu's hostile mode (test-hook register bit 1) is turned on while
#    fio writes and verifies another region: every few hundred I/O
#    completions break the protocol and the driver resets the controller.
#    A scrub check is started (retried while a reset is in progress) and
#    polled until done. dpuemu's log must show anomalies injected between
#    the scrub's start and end; the check still counts N; fio verifies
#    every block with no error and no request waited for an I/O timeout;
#    no reset failed, the controller was never given up on.
# 3. A scrub repair is started and the accelerator unbound while it runs:
#    the unbind completes within the admin timeout (10 s; before, a scrub
#    held the admin queue for up to 10 minutes). dpuemu runs with a scrub
#    rate limit (check.sh: --scrub-rate 256M) so that a scrub lasts
#    seconds and is still running when the unbind comes. Bound again, the volume's
#    disk is back, the scrub log shows the repair done with N repaired, a
#    new check finds 0 and the reference data reads back exactly.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"
. "$(dirname "$0")/protection_common.sh"

[ -z "${DPUBLK_TEST_BIND:-}" ] || skip "needs dpuemu"
log=${DPUBLK_RUNDIR:+$DPUBLK_RUNDIR/dpuemu.log}
[ -n "$log" ] && [ -r "$log" ] || skip "no dpuemu log (not run by scripts/vm.sh)"
ADMIN_TIMEOUT=10
HOOK_REGISTER=$((0x94))

unload_dpublk
dmesg_mark
protection_setup 6
pci=$(accelerator_pci) || fail "no accelerator function"
config=/sys/bus/pci/devices/$pci/config
[ "$(od -An -tx1 -j $((0x90)) -N1 "$config" | tr -d ' ')" = 09 ] ||
	fail "dpuemu without test hooks (no vendor capability at 0x90)"
set_hostile() { # set_hostile 0|1
	printf "\\x0$(($1 * 2))" | dd of="$config" bs=1 seek=$HOOK_REGISTER count=1 conv=notrunc status=none ||
		fail "cannot write the test-hook register"
}
on_exit "set_hostile 0"
# After a failure between unbind and bind, bind again so that the
# configfs tree can be torn down (hooks run last first).
on_exit "[ -e /sys/bus/pci/drivers/dpublk/$pci ] || echo $pci >/sys/bus/pci/drivers/dpublk/bind"

name=sr
dev=$(make_volume "$name" s0,s1,s2,s3,s4,s5 raid6 256M)
reference_write "$dev" 0 96
for i in 0 1 2 3 4 5; do ssd_fault s3 rot $((32768 + i * 2176)) 128; done
report=$(scrub "$name" check)
found=$(awk '{ print $2 }' <<<"$report")
[ -n "$found" ] && [ "$found" -gt 0 ] || fail "the uninterrupted check found nothing: '$report'"
[ "$report" = "mismatches $found repaired 0" ] || fail "the uninterrupted check reported '$report'"
diag "uninterrupted check: $found mismatching sectors"

# --- 2. a scrub while the controller is reset again and again ---
fio_start "$dev" --offset=128M --size=64M --rw=randwrite --bs=4k --iodepth=16 \
	--time_based --runtime=40 --verify_backlog=64
fio_wait_busy "$dev"
start_line=$(wc -l <"$log")
set_hostile 1
# Wait for the first reset, so the scrub starts among them.
for i in $(seq 1 300); do
	dmesg_since_mark | grep -q 'scheduling a controller reset' && break
	sleep 0.1
done
dmesg_since_mark | grep -q 'scheduling a controller reset' || fail "no controller reset within 30 s of hostile mode"
# The start command fails (EIO) if it meets a reset in progress: retry.
started=0
for i in $(seq 1 100); do
	if echo check >"$DPUBLK_CFS/volumes/$name/scrub" 2>/dev/null; then
		started=1
		break
	fi
	sleep 0.1
done
[ "$started" = 1 ] || fail "no scrub could be started in 100 tries during resets"
t0=$(date +%s)
scrub_wait "$name" 300
took=$(($(date +%s) - t0))
set_hostile 0
id=$(dmesg_since_mark | sed -n 's/.*volumes\/sr: scrub #\([0-9]*\) (check) started.*/\1/p' | tail -1)
[ -n "$id" ] || fail "no 'scrub #N (check) started' line in the kernel log"
during=$(tail -n +"$((start_line + 1))" "$log" |
	awk -v s="scrub #$id (check) of namespace" '
		index($0, s) && /started/ { on = 1; next }
		index($0, s) && /done/ { on = 0 }
		on && /hostile: injected/ { n++ }
		END { print n + 0 }')
[ "$during" -gt 0 ] || fail "no anomaly was injected while scrub #$id ran (${took}s): nothing was reset under it"
report="mismatches $(scrub_field "$name" mismatches) repaired $(scrub_field "$name" repaired)"
[ "$report" = "mismatches $found repaired 0" ] ||
	fail "the check under resets reported '$report', the uninterrupted one $found"
resets=$(dmesg_since_mark | awk -v p='scheduling a controller reset (#' 'index($0, p) { s = substr($0, index($0, p) + length(p)); n = s + 0 } END { print n + 0 }')
diag "scrub #$id under resets: ${took}s, $during anomalies injected while it ran, controller resets so far (last logged): $resets; found $found again"
fio_finish
sed -n '/^{/,$p' "$FIO_OUT" >"$FIO_OUT.clean"
max_ms=$(jq '[.jobs[] | .write.clat_ns.max, .read.clat_ns.max] | max / 1000000 | floor' "$FIO_OUT.clean")
diag "fio: longest request took $max_ms ms"
[ "$max_ms" -lt 30000 ] || fail "a request took ${max_ms} ms: it waited for an I/O timeout, not for a reset"
! dmesg_since_mark | grep -qE 'timed out|reset failed|giving up|failing outstanding I/O' ||
	{ dmesg_since_mark | grep -E 'timed out|reset failed|giving up|failing' | sed 's/^/#   /' | head; fail "a command timed out or the controller was failed"; }

# --- 3. unbind while a scrub runs ---
scrub_start "$name" repair
state=$(scrub_field "$name" state)
t0=$(date +%s%N)
timeout 60 sh -c "echo $pci >/sys/bus/pci/drivers/dpublk/unbind" || fail "unbind failed or hung during a scrub"
took=$((($(date +%s%N) - t0) / 1000000))
diag "unbind during a scrub (state '$state' just before) took $took ms"
[ "$state" = running ] || fail "the repair finished before the unbind ('$state'): nothing shown"
[ "$took" -lt $((ADMIN_TIMEOUT * 1000)) ] || fail "unbind took $took ms, more than the admin timeout"
[ ! -e "$dev" ] || fail "$dev still there after unbind"
echo "$pci" >/sys/bus/pci/drivers/dpublk/bind || fail "cannot bind the accelerator again"
for i in $(seq 1 300); do
	[ -b "$dev" ] && break
	sleep 0.1
done
[ -b "$dev" ] || fail "$dev did not come back after binding again"
scrub_wait "$name" 300
report="mismatches $(scrub_field "$name" mismatches) repaired $(scrub_field "$name" repaired)"
[ "$report" = "mismatches $found repaired $found" ] ||
	fail "the repair that outlived the unbind reported '$report', not $found found and repaired"
[ "$(scrub "$name" check)" = "mismatches 0 repaired 0" ] || fail "mismatches left after the repair"
check_reference "$dev" 0 96
[ "$REF_FAILED" = 0 ] || fail "$REF_FAILED reads fail after the repair"
diag "the repair ran on through unbind and bind: $found repaired, data verified, a new check finds 0"
remove_volume "$name"
ssd_fault s3 clear
dmesg_check_clean
exit $KSFT_PASS
