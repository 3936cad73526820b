#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The driver's KUnit suites (ring index and phase arithmetic, PRP
# construction, command IDs, status mapping, reset budget) run when the
# module loads.
. "$(dirname "$0")/test_common.sh"

[ -d /sys/kernel/debug/kunit ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
unload_dpublk
dmesg_mark
load_dpublk
for suite in dpublk_queue dpublk_prp dpublk_command_id dpublk_status dpublk_reset; do
	results=/sys/kernel/debug/kunit/$suite/results
	if [ -r "$results" ]; then
		out=$(cat "$results")
	else
		out=$(dmesg_since_mark | grep -A200 "# Subtest: $suite" || true)
	fi
	[ -n "$out" ] || skip "KUnit results for $suite not found (CONFIG_KUNIT?)"
	echo "$out" | grep -E '^\s*(not )?ok ' | sed 's/^/#   /'
	! echo "$out" | grep -qE '^\s*not ok' || fail "KUnit suite $suite has failures"
	echo "$out" | grep -qE "^\s*ok [0-9]+ $suite" || fail "KUnit suite $suite did not report ok"
done
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
