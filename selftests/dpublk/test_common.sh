#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Helpers shared by the dpublk kselftests. Each test sources this file, runs
# in the VM as root, and exits 0 (pass), 1 (fail) or 4 (skip).

KSFT_PASS=0
KSFT_FAIL=1
KSFT_SKIP=4

DPUBLK_TOP=${DPUBLK_TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
DPUBLK_MODULE=${DPUBLK_MODULE:-$DPUBLK_TOP/build/module/drivers/block/dpublk/dpublk.ko}
CONFIGFS=/sys/kernel/config
TEST_NAME=$(basename "$0" .sh)
TEST_TMP=$(mktemp -d "/tmp/$TEST_NAME.XXXXXX")

# Diagnostics go to stdout prefixed with '# ' so the KTAP stream stays valid.
diag() { printf '# %s: %s\n' "$TEST_NAME" "$*"; }
fail() {
	diag "FAIL: $*"
	dmesg | grep -iE 'dpublk|nvme' | tail -15 | sed 's/^/#   dmesg: /'
	exit $KSFT_FAIL
}
skip() { diag "SKIP: $*"; exit $KSFT_SKIP; }

_cleanup_hooks=()
on_exit() { _cleanup_hooks+=("$1"); }
_run_cleanup() {
	local i
	for ((i = ${#_cleanup_hooks[@]} - 1; i >= 0; i--)); do eval "${_cleanup_hooks[$i]}" || true; done
	rm -rf "$TEST_TMP"
}
trap _run_cleanup EXIT

ensure_configfs() {
	mountpoint -q "$CONFIGFS" || mount -t configfs none "$CONFIGFS" || fail "cannot mount configfs"
}

# Marks the current end of the kernel log; dmesg_check_clean later looks only
# at what came after it.
dmesg_mark() {
	_dmesg_mark="dpublk-selftest-mark-$TEST_NAME-$RANDOM$RANDOM"
	echo "$_dmesg_mark" >/dev/kmsg
}

dmesg_since_mark() {
	dmesg | sed -n "/$_dmesg_mark/,\$p" | tail -n +2
}

# kmemleak_scan: on a kernel with kmemleak (the debug variant), scans now
# and prints what it found that involves dpublk; prints nothing elsewhere.
kmemleak_scan() {
	local k=/sys/kernel/debug/kmemleak
	[ -e "$k" ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
	[ -w "$k" ] || return 0
	echo scan >"$k" 2>/dev/null || return 0
	# A report is a block per object, blank-line separated; keep those
	# whose backtrace names the module.
	awk 'BEGIN { RS = ""; ORS = "\n\n" } /dpublk/' "$k"
}

# Fails the test if the kernel complained since dmesg_mark (and, under
# kmemleak, if an object allocated for dpublk leaked).
dmesg_check_clean() {
	local bad leaks
	leaks=$(kmemleak_scan)
	if [ -n "$leaks" ]; then
		diag "kmemleak:"
		echo "$leaks" | head -40 | sed 's/^/#   /'
		fail "kmemleak found unreferenced objects from dpublk"
	fi
	bad=$(dmesg_since_mark | grep -E 'WARNING:|BUG:|Oops|general protection|kernel BUG|unreferenced object|Call Trace:|refcount_t:|UBSAN:|KASAN:|leak' || true)
	if [ -n "$bad" ]; then
		diag "kernel log since the test started:"
		dmesg_since_mark | sed 's/^/#   /' | tail -60
		fail "the kernel reported a problem: $(echo "$bad" | head -1)"
	fi
}

require_module_file() {
	[ -f "$DPUBLK_MODULE" ] || fail "module not built: $DPUBLK_MODULE"
}

dpublk_loaded() { grep -q '^dpublk ' /proc/modules; }

load_dpublk() {
	require_module_file
	dpublk_loaded || insmod "$DPUBLK_MODULE" "$@" || fail "insmod $DPUBLK_MODULE failed"
}

unload_dpublk() {
	! dpublk_loaded || rmmod dpublk || fail "rmmod dpublk failed"
}

# fio_verify DEV [extra fio args...]: writes a verifiable pattern and reads it
# back; fails the test on any mismatch or error.
fio_verify() {
	local dev=$1
	shift
	local out="$TEST_TMP/fio-verify.json"
	fio --name=verify --filename="$dev" --ioengine=io_uring --direct=1 \
		--rw=randwrite --bs=4k --iodepth=16 --size=64M --verify=crc32c \
		--verify_fatal=1 --do_verify=1 --verify_state_save=0 --output-format=json "$@" >"$out" 2>"$TEST_TMP/fio.err" ||
		{ cat "$TEST_TMP/fio.err" | sed 's/^/#   /'; fail "fio verify on $dev failed"; }
	local errors
	errors=$(jq '[.jobs[].error] | add' "$out")
	[ "$errors" = 0 ] || fail "fio reported error $errors on $dev"
	local written
	written=$(jq '[.jobs[].write.io_bytes] | add' "$out")
	[ "$written" -gt 0 ] || fail "fio wrote nothing to $dev"
	diag "fio verify on $dev: $written bytes written and verified"
}

# host_request COMMAND [ARGS]: asks the host agent of this VM run
# (scripts/vm-agent.sh) to do something outside the guest, such as killing
# or restarting dpuemu; prints its output, fails unless it answered ok.
host_request() {
	[ -n "${DPUBLK_RUNDIR:-}" ] && [ -d "$DPUBLK_RUNDIR/ctl" ] || skip "no host agent (not run by scripts/vm.sh)"
	local id="req-$$-$RANDOM" answer i
	echo "$*" >"$DPUBLK_RUNDIR/ctl/$id.req.tmp"
	mv "$DPUBLK_RUNDIR/ctl/$id.req.tmp" "$DPUBLK_RUNDIR/ctl/$id.req"
	for i in $(seq 1 600); do
		if [ -e "$DPUBLK_RUNDIR/ctl/$id.done" ]; then
			answer=$(cat "$DPUBLK_RUNDIR/ctl/$id.done")
			rm -f "$DPUBLK_RUNDIR/ctl/$id.done"
			[ "$(head -1 <<<"$answer")" = ok ] || fail "host agent: '$*' failed: $(tail -n +2 <<<"$answer")"
			tail -n +2 <<<"$answer"
			return 0
		fi
		sleep 0.1
	done
	fail "host agent did not answer '$*' within 60 s"
}

# dpublk_ssd_devices: block devices of the local SSD functions (PCI vendor
# 0x1af4, device 0x10f1) bound to the stock nvme driver.
dpublk_ssd_devices() {
	local ctrl pci
	for ctrl in /sys/class/nvme/nvme*; do
		[ -e "$ctrl/device/vendor" ] || continue
		[ "$(cat "$ctrl/device/vendor")" = 0x1af4 ] && [ "$(cat "$ctrl/device/device")" = 0x10f1 ] || continue
		for ns in "$ctrl"/nvme*n*; do
			[ -e "$ns" ] && echo "/dev/$(basename "$ns")"
		done
	done
}

# seeded PASS OFFSET_MIB SIZE_MIB SEED [fio options...]: a reproducible
# fio write with crc32c verify on $dev (or, with --verify_only=1, its check
# of every block, which must read all SIZE_MIB).
seeded() {
	local out=$TEST_TMP/$1.json
	fio --name="$1" --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
		--iodepth=8 --offset="$2M" --size="$3M" --randseed="$4" --verify=crc32c --verify_fatal=1 \
		--verify_state_save=0 --output-format=json --output="$out" "${@:5}" ||
		{ sed 's/^/#   /' "$out" | tail -20; fail "fio $1 failed"; }
	[ "$(jq '[.jobs[].error] | add' "$out")" = 0 ] || fail "fio $1 reported an error"
	case " ${*:5} " in
	*" --verify_only=1 "*)
		[ "$(jq '[.jobs[].read.io_bytes] | add' "$out")" = $(($3 << 20)) ] ||
			fail "fio $1 verified $(jq '[.jobs[].read.io_bytes] | add' "$out") bytes, not $3 MiB"
		;;
	esac
}
