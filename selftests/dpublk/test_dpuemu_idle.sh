#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dpuemu sleeps when there is no I/O: a poller that spins while idle would
# burn a whole host core. The bound is loose on purpose (a quarter of a
# core); the exact figure is printed for the record.
. "$(dirname "$0")/test_common.sh"

[ -n "$(lspci -n -d 1af4:10f0; lspci -n -d 1af4:10f1)" ] || skip "no dpuemu functions"
devs=$(dpublk_ssd_devices)
# Some I/O first, so the workers have been busy and must fall asleep again.
for dev in $devs; do
	dd if="$dev" of=/dev/null bs=1M count=16 iflag=direct status=none || fail "read from $dev"
done
sleep 2
seconds=10
cpu=$(host_request dpuemu-cpu $seconds) || { echo "$cpu"; exit $KSFT_FAIL; }
diag "dpuemu used $cpu CPU seconds in $seconds idle seconds ($(awk -v c="$cpu" -v s=$seconds 'BEGIN { printf "%.2f", 100 * c / s }')% of a core)"
awk -v c="$cpu" -v s=$seconds 'BEGIN { exit !(c / s < 0.25) }' || fail "dpuemu is busy while idle: $cpu s in $seconds s"
exit $KSFT_PASS
