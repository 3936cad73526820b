#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Kept until scripts/check.sh calls the power-loss campaign directly
# (`run_script power-loss crash-campaign.sh kp0 kp1 kp2`): runs
# scripts/crash-campaign.sh with three kill points and folds its KTAP into
# the one result check.sh still expects (test_dpuemu_crash), the campaign's
# own lines shown as diagnostics. Exits non-zero on failure.
ktap=$("$(dirname "$0")/crash-campaign.sh" --kill-points 3 "$@")
rc=$?
echo "TAP version 13"
echo "1..1"
sed 's/^/# /' <<<"$ktap"
pass=$(grep -c '^ok ' <<<"$ktap")
if [ "$rc" = 0 ] && [ "$pass" = 3 ] && grep -q '^# Totals:' <<<"$ktap"; then
	echo "ok 1 test_dpuemu_crash"
	echo "# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0"
else
	echo "not ok 1 test_dpuemu_crash # power-loss campaign: $pass of 3 kill points passed (exit $rc)"
	echo "# Totals: pass:0 fail:1 xfail:0 xpass:0 skip:0 error:0"
	exit 1
fi
