# SPDX-License-Identifier: GPL-2.0
# Helpers for the protection tests (degraded mode, rebuild onto a spare,
# scrub). Source after test_common.sh, dpublk_disk_common.sh and
# configfs_common.sh.
#
# Fault ranges are in SSD logical blocks of 512 bytes; "0 0" is the whole SSD.

# protection_setup N: loads dpublk for management and attaches SSDs 0..N-1
# as ssds/s0.. ; skips with fewer SSD functions.
protection_setup() {
	local n=$1 i
	[ "$(ssd_pci_addresses | wc -l)" -ge "$n" ] || skip "needs $n SSD functions (vm.sh --ssds $n)"
	load_dpublk_management
	for i in $(seq 0 $((n - 1))); do attach_ssd "s$i" "$i"; done
}

# ssd_fault NAME FAULT...: writes FAULT to ssds/NAME/fault.
ssd_fault() {
	local name=$1
	shift
	cfs_write "$DPUBLK_CFS/ssds/$name/fault" "$*"
	diag "ssds/$name: fault $*"
}

# vol_state NAME: volumes/NAME/state.
vol_state() { cat "$DPUBLK_CFS/volumes/$1/state"; }

# wait_state NAME STATE [SECONDS]: waits for volumes/NAME/state to be
# STATE (default 60 s).
wait_state() {
	local i now
	for i in $(seq 1 $((${3:-60} * 10))); do
		now=$(vol_state "$1")
		[ "$now" = "$2" ] && return 0
		sleep 0.1
	done
	fail "volumes/$1 is '$now', not '$2', after ${3:-60} s"
}

# disk_io_count DEV: completed reads + writes of a disk.
disk_io_count() { awk '{ print $1 + $5 }' "/sys/block/$(basename "$1")/stat"; }

# fio_start DEV [fio args...]: starts a randwrite + crc32c verify job on DEV
# in the background (the job writes first, then reads everything back);
# sets FIO_PID. fio_finish collects it.
fio_start() {
	local dev=$1
	shift
	FIO_OUT="$TEST_TMP/fio-$RANDOM.json"
	fio --name=verify --filename="$dev" --ioengine=io_uring --direct=1 \
		--rw=randwrite --bs=64k --iodepth=8 --size=32M --verify=crc32c \
		--verify_fatal=1 --do_verify=1 --verify_state_save=0 \
		--output-format=json --output="$FIO_OUT" "$@" >"$FIO_OUT.log" 2>&1 &
	FIO_PID=$!
	FIO_ARGS="$dev $*"
	on_exit "kill $FIO_PID 2>/dev/null; wait $FIO_PID 2>/dev/null"
}

# fio_wait_busy DEV: waits until the running fio job has done some I/O on
# DEV (under TCG fio takes seconds to start).
fio_wait_busy() {
	local before i
	before=$(disk_io_count "$1")
	for i in $(seq 1 600); do
		kill -0 "$FIO_PID" 2>/dev/null || break
		[ "$(disk_io_count "$1")" -gt $((before + 50)) ] && return 0
		sleep 0.1
	done
	sed 's/^/#   /' "$FIO_OUT.log" | tail -20
	fail "fio ($FIO_ARGS) did no I/O within 60 s"
}

# fio_running: whether the background fio job is still running.
fio_running() { kill -0 "$FIO_PID" 2>/dev/null; }

# fio_finish: waits for the background job; fails on any error or verify
# mismatch, or if it wrote nothing.
fio_finish() {
	local rc errors written
	wait "$FIO_PID"
	rc=$?
	if [ "$rc" != 0 ]; then
		sed 's/^/#   /' "$FIO_OUT.log" | tail -20
		fail "fio verify ($FIO_ARGS) failed with exit $rc"
	fi
	sed -n '/^{/,$p' "$FIO_OUT" >"$FIO_OUT.clean"
	errors=$(jq '[.jobs[].error] | add' "$FIO_OUT.clean") || fail "cannot parse the fio report"
	[ "$errors" = 0 ] || fail "fio reported error $errors ($FIO_ARGS)"
	written=$(jq '[.jobs[].write.io_bytes] | add' "$FIO_OUT.clean")
	[ "$written" -gt 0 ] || fail "fio wrote nothing ($FIO_ARGS)"
	diag "fio verify ($FIO_ARGS): $written bytes written, read back and verified (crc32c), 0 mismatches"
}

# reference_write DEV OFFSET_MIB MIB: writes MIB MiB of random data at
# OFFSET_MIB and keeps a copy in $TEST_TMP/ref.
reference_write() {
	head -c "$(($3 << 20))" /dev/urandom >"$TEST_TMP/ref"
	dd if="$TEST_TMP/ref" of="$1" bs=1M seek="$2" oflag=direct conv=fsync status=none ||
		fail "writing the reference data to $1"
}

# check_reference DEV OFFSET_MIB MIB: reads the reference data back 1 MiB
# at a time with O_DIRECT. Every read must either fail or return exactly
# what was written (the test fails otherwise); sets REF_FAILED to the
# number of failed reads.
check_reference() {
	local dev=$1 off=$2 mib=$3 i
	REF_FAILED=0
	for i in $(seq 0 $((mib - 1))); do
		if dd if="$dev" of="$TEST_TMP/chunk" bs=1M skip=$((off + i)) count=1 iflag=direct status=none 2>/dev/null; then
			dd if="$TEST_TMP/ref" of="$TEST_TMP/want" bs=1M skip="$i" count=1 status=none
			cmp -s "$TEST_TMP/chunk" "$TEST_TMP/want" || fail "MiB $((off + i)) of $dev reads back wrong data"
		else
			REF_FAILED=$((REF_FAILED + 1))
		fi
	done
}

# scrub_read NAME: volumes/NAME/scrub. A read fails (EIO) while the
# controller is being reset or when a hostile device sent a malformed
# Maintenance log (the driver refuses it): retried, up to 100 times.
scrub_read() {
	local i
	for i in $(seq 1 100); do
		cat "$DPUBLK_CFS/volumes/$1/scrub" 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}

# scrub_field NAME FIELD: one field of volumes/NAME/scrub (empty if it
# cannot be read).
scrub_field() {
	scrub_read "$1" | awk -v f="$2" '$1 == f { print $2 }'
}

# scrub_start NAME ACTION: starts a scrub (check or repair); the write
# returns at once while the accelerator scrubs in the background. Prints
# nothing; the kernel log names the scrub's operation ID.
scrub_start() {
	cfs_write "$DPUBLK_CFS/volumes/$1/scrub" "$2"
	[ "$(scrub_field "$1" action)" = "$2" ] || fail "$1: the scrub log does not show a $2 after starting one"
}

# scrub_wait NAME [SECONDS]: polls volumes/NAME/scrub until the scrub is no
# longer running (default limit 300 s); fails unless it ended "done" with
# every row checked and progress 100.
scrub_wait() {
	local i state rows
	for i in $(seq 1 $((${2:-300} * 10))); do
		state=$(scrub_field "$1" state)
		[ -n "$state" ] && [ "$state" != running ] && break
		sleep 0.1
	done
	local report
	report=$(scrub_read "$1") || fail "$1: the scrub log cannot be read"
	[ "$state" = done ] || fail "$1: scrub is '$state' after ${2:-300} s: $(tr '\n' ' ' <<<"$report")"
	rows=$(awk '$1 == "rows" { print ($2 == $3 && $3 > 0) }' <<<"$report")
	[ "$rows" = 1 ] || fail "$1: a finished scrub did not check every row: $(tr '\n' ' ' <<<"$report")"
	awk '$1 == "progress" { exit $2 != 100 }' <<<"$report" || fail "$1: a finished scrub shows $(tr '\n' ' ' <<<"$report")"
}

# scrub NAME ACTION: runs a scrub to its end and prints what it found as
# "mismatches N repaired N".
scrub() {
	local start took
	start=$(date +%s%N)
	scrub_start "$1" "$2"
	scrub_wait "$1"
	took=$((($(date +%s%N) - start) / 1000000))
	local found repaired
	found=$(scrub_field "$1" mismatches)
	repaired=$(scrub_field "$1" repaired)
	diag "$1: scrub $2 took $took ms: mismatches $found repaired $repaired" >&2
	echo "mismatches $found repaired $repaired"
}
