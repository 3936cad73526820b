#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The driver's KUnit suites run when the module loads. Every suite declared
# in the source (`#[kunit_tests(NAME)]` under drivers/ and rust/kernel-ext/)
# must report ok with at least one case and no failing case; a suite that
# does not report at all fails the test (a suite added to the source is
# checked without anyone editing this file).
. "$(dirname "$0")/test_common.sh"

mapfile -t suites < <(grep -rhoE '#\[kunit_tests\([a-z0-9_]+\)\]' \
	"$DPUBLK_TOP/drivers" "$DPUBLK_TOP/rust/kernel-ext" | sed 's/.*(\(.*\))\]/\1/' | sort -u)
[ "${#suites[@]}" -gt 0 ] || fail "no #[kunit_tests(...)] suites found in the source"
diag "suites declared in the source: ${suites[*]}"

[ -d /sys/kernel/debug/kunit ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
unload_dpublk
dmesg_mark
load_dpublk
cases=0
for suite in "${suites[@]}"; do
	results=/sys/kernel/debug/kunit/$suite/results
	if [ -r "$results" ]; then
		out=$(cat "$results")
	else
		out=$(dmesg_since_mark | grep -A200 "# Subtest: $suite" || true)
	fi
	[ -n "$out" ] || fail "KUnit suite $suite declared in the source reported nothing"
	echo "$out" | grep -E '^\s*(not )?ok ' | sed 's/^/#   /'
	! echo "$out" | grep -qE '^\s*not ok' || fail "KUnit suite $suite has failures"
	echo "$out" | grep -qE "^\s*ok [0-9]+ $suite" || fail "KUnit suite $suite did not report ok"
	n=$(echo "$out" | grep -E '^\s*ok [0-9]+ ' | grep -cvE "^\s*ok [0-9]+ $suite( |$)" || true)
	[ "$n" -gt 0 ] || fail "KUnit suite $suite ran no cases"
	! echo "$out" | grep -qE '^\s*ok [0-9]+ .*# SKIP' || fail "KUnit suite $suite skipped a case"
	cases=$((cases + n))
done
diag "${#suites[@]} KUnit suites, $cases cases passed"
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
