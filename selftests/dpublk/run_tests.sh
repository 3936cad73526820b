#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# KTAP runner for the dpublk kselftests, run inside the VM.
#
#   run_tests.sh [test names...]   (default: every test listed in TESTS)
#
# Prints KTAP (TAP version 13) on stdout: one 'ok'/'not ok' line per test,
# the tests' own diagnostics as '#' lines, and a totals line. Exits 0 when
# nothing failed, 1 otherwise.
#
# Each test runs under a time limit: the `timeout=` of `settings`, or its
# own shorter or longer one from a `# dpublk-timeout: SECONDS` line in the
# test script. A test over its limit is killed and reported as
# `not ok N name # TIMEOUT`, and the next test runs. A skip is reported as
# `ok N name # SKIP reason`; scripts/check.sh decides whether a skip is
# allowed (selftests/dpublk/skips-allowed), so a skip never passes silently.
cd "$(dirname "$0")" || exit 1

# By default every test here; scripts/check.sh names the tests of each VM
# suite, since each needs its own hardware.
mapfile -t TESTS < <(ls test_*.sh | sed 's/\.sh$//')
[ $# -gt 0 ] && TESTS=("$@")

default_timeout=$(sed -n 's/^timeout=//p' settings 2>/dev/null)
echo "TAP version 13"
echo "1..${#TESTS[@]}"
pass=0 fail=0 skipped=0 n=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for test in "${TESTS[@]}"; do
	n=$((n + 1))
	if [ ! -f "./$test.sh" ]; then
		echo "not ok $n $test # no such test"
		fail=$((fail + 1))
		continue
	fi
	limit=$(sed -n 's/^# dpublk-timeout: *\([0-9][0-9]*\)$/\1/p' "./$test.sh" | head -1)
	limit=${limit:-${default_timeout:-600}}
	# DPUBLK_TIME_FACTOR (make check-debug): a slower kernel, longer limits.
	limit=$((limit * ${DPUBLK_TIME_FACTOR:-1}))
	start=$(date +%s)
	timeout --kill-after=10 "$limit" "./$test.sh" 2>&1 | sed -u 's/^\([^#]\)/# \1/' | tee "$out"
	rc=${PIPESTATUS[0]}
	took=$(($(date +%s) - start))
	case $rc in
	0) echo "ok $n $test # time=${took}s"; pass=$((pass + 1)) ;;
	4)
		reason=$(sed -n 's/^# [^ ]*: SKIP: //p' "$out" | tail -1)
		echo "ok $n $test # SKIP ${reason:-no reason given}"
		skipped=$((skipped + 1)) ;;
	124 | 137) echo "not ok $n $test # TIMEOUT after ${took}s (limit ${limit}s)"; fail=$((fail + 1)) ;;
	*) echo "not ok $n $test # exit=$rc"; fail=$((fail + 1)) ;;
	esac
done
echo "# Totals: pass:$pass fail:$fail xfail:0 xpass:0 skip:$skipped error:0"
[ "$fail" = 0 ]
