#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Judges one VM suite's KTAP output against what was asked of it.
#
#   ktap-verdict.sh SUITE KTAP-FILE ALLOWED-SKIPS-FILE TEST...
#
# Prints one line per test: `PASS suite/test`, `FAIL suite/test: why` or
# `SKIP suite/test: reason (allowed: why)`, then `counts PASSED FAILED SKIPPED`
# as its last line. A suite cannot pass by accident:
# - its plan (`1..N`) must equal the number of tests asked for, and its
#   result lines must name exactly those tests, once each, in that order;
# - a test with no result line (the VM died, the run hung) counts as failed;
# - a skip counts as skipped only when ALLOWED-SKIPS-FILE lists it
#   (`SUITE TEST why`, SUITE may be `*`); any other skip is a failure;
# - the `# Totals:` line must be present (the runner finished).
set -euo pipefail
suite=$1 ktap=$2 allowed=$3
shift 3
tests=("$@")
passed=0 failed=0 skipped=0

fail_line() { echo "FAIL $suite/$1: $2"; failed=$((failed + 1)); }

plan=$(sed -n 's/^1\.\.\([0-9][0-9]*\)$/\1/p' "$ktap" 2>/dev/null | head -1)
if [ -z "$plan" ]; then
	fail_line "(plan)" "no KTAP plan line: the VM or the runner did not start"
elif [ "$plan" != "${#tests[@]}" ]; then
	fail_line "(plan)" "plan 1..$plan but ${#tests[@]} tests were asked for"
fi

# Result lines in order: "ok|not ok" NUMBER NAME [# directive].
mapfile -t results < <(grep -E '^(not )?ok [0-9]+ ' "$ktap" 2>/dev/null || true)
i=0
for line in "${results[@]}"; do
	name=$(awk '{ print ($1 == "not") ? $4 : $3 }' <<<"$line")
	expected=${tests[$i]:-}
	i=$((i + 1))
	if [ -z "$expected" ]; then
		fail_line "$name" "result for a test that was not asked for"
		continue
	fi
	if [ "$name" != "$expected" ]; then
		fail_line "$expected" "result line $i names '$name' instead"
		continue
	fi
	case $line in
	"not ok "*)
		fail_line "$name" "${line#*# }" ;;
	*"# SKIP"*)
		reason=${line#*# SKIP}
		reason=${reason# }
		why=$(awk -v s="$suite" -v t="$name" '!/^#/ && NF >= 3 && ($1 == s || $1 == "*") && $2 == t {
			$1 = ""; $2 = ""; sub(/^ +/, ""); print; exit }' "$allowed" 2>/dev/null || true)
		if [ -n "$why" ]; then
			echo "SKIP $suite/$name: $reason (allowed: $why)"
			skipped=$((skipped + 1))
		else
			fail_line "$name" "skipped ($reason) and not in $(basename "$allowed")"
		fi ;;
	*)
		echo "PASS $suite/$name"
		passed=$((passed + 1)) ;;
	esac
done
# Tests asked for that never reported (the VM died or hung before them).
for ((j = ${#results[@]}; j < ${#tests[@]}; j++)); do
	fail_line "${tests[$j]}" "no result (the VM died, hung or was killed before it finished)"
done
grep -q '^# Totals:' "$ktap" 2>/dev/null || fail_line "(totals)" "no '# Totals:' line: the runner did not finish"
echo "counts $passed $failed $skipped"
