#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# KTAP runner for the dpublk kselftests, run inside the VM.
#
#   run_tests.sh [test names...]   (default: every test listed in TESTS)
#
# Prints KTAP (TAP version 13) on stdout: one 'ok'/'not ok' line per test,
# the tests' own diagnostics as '#' lines, and a totals line. Exits 0 when
# nothing failed, 1 otherwise.
cd "$(dirname "$0")" || exit 1

# By default every test here; scripts/check.sh names the tests of each VM
# suite, since each needs its own hardware (tests skip what is absent).
mapfile -t TESTS < <(ls test_*.sh | sed 's/\.sh$//')
[ $# -gt 0 ] && TESTS=("$@")

timeout=$(sed -n 's/^timeout=//p' settings)
echo "TAP version 13"
echo "1..${#TESTS[@]}"
pass=0 fail=0 skipped=0 n=0
for test in "${TESTS[@]}"; do
	n=$((n + 1))
	start=$(date +%s)
	timeout --kill-after=10 "${timeout:-600}" "./$test.sh" 2>&1 | sed -u 's/^\([^#]\)/# \1/'
	rc=${PIPESTATUS[0]}
	took=$(($(date +%s) - start))
	case $rc in
	0) echo "ok $n $test # time=${took}s"; pass=$((pass + 1)) ;;
	4) echo "ok $n $test # SKIP"; skipped=$((skipped + 1)) ;;
	124 | 137) echo "not ok $n $test # TIMEOUT after ${took}s"; fail=$((fail + 1)) ;;
	*) echo "not ok $n $test # exit=$rc"; fail=$((fail + 1)) ;;
	esac
done
echo "# Totals: pass:$pass fail:$fail xfail:0 xpass:0 skip:$skipped error:0"
[ "$fail" = 0 ]
