# SPDX-License-Identifier: GPL-2.0
# Helpers for tests that drive dpublk disks. Source after test_common.sh.
#
# The tests run on the accelerator function (1af4:10f0). For driver
# development without dpuemu they can also run on any NVMe-style function
# bound through driver_override: DPUBLK_TEST_BIND=<vendor>:<device>, e.g.
# 1b36:0010 for QEMU's `-device nvme`.

# accelerator_pci: PCI address of the function the tests drive, if any.
accelerator_pci() {
	local d want_v=0x1af4 want_d=0x10f0
	if [ -n "${DPUBLK_TEST_BIND:-}" ]; then
		want_v=0x${DPUBLK_TEST_BIND%%:*}
		want_d=0x${DPUBLK_TEST_BIND##*:}
	fi
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor" 2>/dev/null)" = "$want_v" ] && [ "$(cat "$d/device" 2>/dev/null)" = "$want_d" ] &&
			{ basename "$d"; return 0; }
	done
	return 1
}

# bind_test_function: with DPUBLK_TEST_BIND, hands the function to dpublk.
bind_test_function() {
	[ -n "${DPUBLK_TEST_BIND:-}" ] || return 0
	local pci
	pci=$(accelerator_pci) || return 0
	[ "$(basename "$(readlink "/sys/bus/pci/devices/$pci/driver" 2>/dev/null)")" = dpublk ] && return 0
	[ -e "/sys/bus/pci/devices/$pci/driver" ] && echo "$pci" >"/sys/bus/pci/devices/$pci/driver/unbind"
	echo dpublk >"/sys/bus/pci/devices/$pci/driver_override"
	echo "$pci" >/sys/bus/pci/drivers_probe
}

# load_dpublk_disk: loads the module and waits for /dev/dpublk0; skips
# without an accelerator, fails if it has no disk.
load_dpublk_disk() {
	accelerator_pci >/dev/null || skip "no accelerator function (run with --accelerator)"
	load_dpublk
	bind_test_function
	local i
	for i in $(seq 1 100); do
		[ -b /dev/dpublk0 ] && return 0
		sleep 0.1
	done
	dmesg | grep -i dpublk | tail -20 | sed 's/^/#   /'
	fail "no /dev/dpublk0 after loading the driver (is a namespace configured? DPUBLK_DPUEMU_ARGS=--passthrough-ssd 0)"
}

# dpublk_fio_verify DEV [fio args...]: randwrite then verify (crc32c); fails
# on any error or mismatch.
dpublk_fio_verify() {
	local dev=$1
	shift
	local out="$TEST_TMP/fio-verify.json"
	rm -f "$out"
	fio --name=verify --filename="$dev" --ioengine=io_uring --direct=1 \
		--rw=randwrite --bs=4k --iodepth=16 --size=64M --verify=crc32c \
		--verify_fatal=1 --do_verify=1 --verify_state_save=0 \
		--output-format=json --output="$out" "$@" >"$TEST_TMP/fio.log" 2>&1 ||
		{ sed 's/^/#   /' "$TEST_TMP/fio.log" | tail -20; fail "fio verify on $dev failed ($*)"; }
	local errors written
	# fio puts notices (e.g. about several writers) before the JSON.
	sed -n '/^{/,$p' "$out" >"$out.clean"
	errors=$(jq '[.jobs[].error] | add' "$out.clean") || fail "cannot parse the fio report"
	[ "$errors" = 0 ] || fail "fio reported error $errors on $dev ($*)"
	written=$(jq '[.jobs[].write.io_bytes] | add' "$out.clean")
	[ "$written" -gt 0 ] || fail "fio wrote nothing to $dev ($*)"
	diag "fio verify on $dev ($*): $written bytes written and verified"
}

# wait_disk_busy PID: waits until fio (PID) has I/O going on /dev/dpublk0
# (the disk's completed I/O count grows); under TCG fio can take seconds to
# start. Fails if fio dies or nothing happens within 60 s.
wait_disk_busy() {
	local pid=$1 i before now
	before=$(awk '{ print $1 + $5 }' /sys/block/dpublk0/stat)
	for i in $(seq 1 600); do
		kill -0 "$pid" 2>/dev/null || fail "fio exited before doing I/O"
		now=$(awk '{ print $1 + $5 }' /sys/block/dpublk0/stat)
		[ "$now" -gt "$((before + 100))" ] && return 0
		sleep 0.1
	done
	fail "no I/O on dpublk0 60 s after starting fio"
}

# short_io_timeout [MS]: the block layer's timeout of /dev/dpublk0's requests
# (the driver's is 30 s) down to MS (5000), so tests of the timeout, abort and
# reset paths wait seconds, not minutes; the paths are the same.
short_io_timeout() {
	echo "${1:-5000}" >/sys/block/dpublk0/queue/io_timeout || fail "cannot set the request timeout"
	[ "$(cat /sys/block/dpublk0/queue/io_timeout)" = "${1:-5000}" ] || fail "request timeout not taken"
}
