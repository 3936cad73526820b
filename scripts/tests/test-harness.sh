#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Host-side tests of the test harness itself: the in-VM runner
# (selftests/dpublk/run_tests.sh) and the suite judge (scripts/ktap-verdict.sh)
# must turn hangs, crashes, missing tests and unlisted skips into failures.
# Prints KTAP; exits non-zero when a check fails.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
n=0 bad=0
check() { # check NAME CONDITION-COMMAND...
	local name=$1; shift
	n=$((n + 1))
	if "$@"; then echo "ok $n $name"; else echo "not ok $n $name"; bad=$((bad + 1)); fi
}
echo "TAP version 13"
echo "1..14"

# --- run_tests.sh on fake tests ------------------------------------------
fake=$work/selftests
mkdir -p "$fake"
cp "$top/selftests/dpublk/run_tests.sh" "$fake/"
echo timeout=30 >"$fake/settings"
printf '#!/bin/bash\necho fine\nexit 0\n' >"$fake/test_pass.sh"
printf '#!/bin/bash\necho "# test_skip: SKIP: no widget"\nexit 4\n' >"$fake/test_skip.sh"
printf '#!/bin/bash\nexit 1\n' >"$fake/test_fail.sh"
printf '#!/bin/bash\n# dpublk-timeout: 2\nsleep 300\n' >"$fake/test_hang.sh"
chmod +x "$fake"/*.sh
start=$(date +%s)
"$fake/run_tests.sh" test_pass test_hang test_skip test_fail test_absent >"$work/run.ktap" 2>&1
rc=$?
took=$(($(date +%s) - start))
check "runner exits non-zero when a test fails" [ $rc != 0 ]
check "runner kills a hung test at its own limit and goes on (${took}s)" \
	grep -q '^not ok 2 test_hang # TIMEOUT' "$work/run.ktap"
check "runner took well under the settings limit for the hung test" [ "$took" -lt 25 ]
check "runner reports a skip with its reason" grep -q '^ok 3 test_skip # SKIP no widget$' "$work/run.ktap"
check "runner reports a missing test as not ok" grep -q '^not ok 5 test_absent' "$work/run.ktap"
check "runner prints a plan for every test asked for" grep -q '^1\.\.5$' "$work/run.ktap"

# --- ktap-verdict.sh ------------------------------------------------------
verdict() { "$top/scripts/ktap-verdict.sh" "$@" | tail -1; }
printf 'suiteA test_skip widget not present on this machine kind\n' >"$work/allowed"
: >"$work/none"
# A clean run with an allowed skip.
printf 'TAP version 13\n1..2\nok 1 test_pass # time=1s\nok 2 test_skip # SKIP no widget\n# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:1 error:0\n' >"$work/good.ktap"
check "verdict counts an allowed skip as skipped" [ "$(verdict suiteA "$work/good.ktap" "$work/allowed" test_pass test_skip)" = "counts 1 0 1" ]
check "verdict fails a skip that is not allowed" [ "$(verdict suiteA "$work/good.ktap" "$work/none" test_pass test_skip)" = "counts 1 1 0" ]
check "verdict fails an allowed test's skip in another suite" [ "$(verdict suiteB "$work/good.ktap" "$work/allowed" test_pass test_skip)" = "counts 1 1 0" ]
# The VM died after the first test: no further results, no totals.
printf 'TAP version 13\n1..3\nok 1 test_pass # time=1s\n' >"$work/died.ktap"
check "verdict fails tests that never reported and the missing totals" [ "$(verdict suiteA "$work/died.ktap" "$work/none" test_pass test_b test_c)" = "counts 1 3 0" ]
# The runner ran fewer tests than were asked for.
printf 'TAP version 13\n1..1\nok 1 test_pass\n# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0\n' >"$work/short.ktap"
check "verdict fails a plan smaller than the tests asked for" [ "$(verdict suiteA "$work/short.ktap" "$work/none" test_pass test_b)" = "counts 1 2 0" ]
# A result for another test than the one asked for at that place.
printf 'TAP version 13\n1..1\nok 1 test_other\n# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0\n' >"$work/other.ktap"
check "verdict fails a result line naming the wrong test" [ "$(verdict suiteA "$work/other.ktap" "$work/none" test_pass)" = "counts 0 1 0" ]
# No output at all (the VM never booted).
: >"$work/empty.ktap"
check "verdict fails an empty suite" [ "$(verdict suiteA "$work/empty.ktap" "$work/none" test_pass)" = "counts 0 3 0" ]
# The allow-list the project ships has a reason on every entry.
check "every allowed skip in selftests/dpublk/skips-allowed has a reason" \
	awk '!/^#/ && NF > 0 && NF < 3 { exit 1 }' "$top/selftests/dpublk/skips-allowed"

echo "# Totals: pass:$((n - bad)) fail:$bad xfail:0 xpass:0 skip:0 error:0"
[ "$bad" = 0 ]
