#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# No lock shared by all configfs handles is held across a command to the
# accelerator (issue 14: the SSD registry mutex was). The accelerator is
# frozen (SIGSTOP, as a hung device) while a `device` write names an SSD by
# serial number, which makes the driver ask the accelerator for its SSD
# list: that write waits. Meanwhile what needs no command must go on at
# once: mkdir and rmdir of SSD handles, a volume's `ssds` read and written
# (they look SSD handles up by name in the registry). After the thaw the
# waiting write completes and takes its SSD.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 2 ] || skip "needs 2 SSD functions"
dmesg_mark
load_dpublk_management
S=$DPUBLK_CFS/ssds
V=$DPUBLK_CFS/volumes
bdf1=$(ssd_pci 1)
serial1=$(ssd_serial 1)
[ -n "$serial1" ] || fail "SSD 1 ($bdf1) shows no serial under the nvme driver"
mkdir "$S/sa" "$S/sx" || fail "mkdir of SSD handles"
cfs_write "$S/sa/device" "$(ssd_pci 0)"
mkdir "$V/lv" || fail "mkdir volumes/lv"

host_request dpuemu-freeze >/dev/null
on_exit "host_request dpuemu-thaw >/dev/null"
frozen_at=$(date +%s%N)
(echo "$serial1" >"$S/sx/device") 2>"$TEST_TMP/device.err" &
writer=$!
sleep 0.5
kill -0 "$writer" 2>/dev/null || fail "the device write did not wait for the frozen accelerator: $(cat "$TEST_TMP/device.err")"
# quick WHAT COMMAND...: COMMAND must finish within 1.5 s.
quick() {
	local what=$1 start took
	shift
	start=$(date +%s%N)
	timeout 10 "$@" || fail "$what failed while the accelerator was frozen"
	took=$((($(date +%s%N) - start) / 1000000))
	[ "$took" -lt 1500 ] || fail "$what took $took ms while a device write waited for the accelerator"
	diag "$what: $took ms"
}
quick "mkdir ssds/sy" mkdir "$S/sy"
quick "reading volumes/lv/ssds" cat "$V/lv/ssds"
quick "writing volumes/lv/ssds" sh -c "echo sa >'$V/lv/ssds'"
quick "reading volumes/lv/ssds again" grep -qx sa "$V/lv/ssds"
quick "rmdir ssds/sy" rmdir "$S/sy"
kill -0 "$writer" 2>/dev/null || fail "the device write finished while the accelerator was frozen"
host_request dpuemu-thaw >/dev/null
wait "$writer" || fail "the device write failed after the thaw: $(cat "$TEST_TMP/device.err")"
diag "the device write waited $((($(date +%s%N) - frozen_at) / 1000000)) ms for the accelerator"
[ "$(cat "$S/sx/index")" = 1 ] || fail "ssds/sx has index $(cat "$S/sx/index"), expected 1"
[ "$(cat "$S/sx/device")" = "$bdf1" ] || fail "ssds/sx is $(cat "$S/sx/device"), expected $bdf1"
rmdir "$V/lv" "$S/sa" "$S/sx" || fail "rmdir of the handles"
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
