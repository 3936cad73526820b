#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Volumes persist on the accelerator (selftests/dpublk/test_volume_persistence.sh)
# across two VM runs over the same SSD images: run 1 creates volumes, a
# snapshot and an encrypted volume through configfs, writes and flushes
# data, reloads the module (the volumes come back at once), then kills
# dpuemu -9; run 2 restarts dpuemu on the same images, loads the module and
# finds the volumes and their data again, and a volume's
# DPUBLK_PERSIST_SNAPSHOTS (default 100) snapshots with their content.
#
# test_configfs_locked runs first in both runs: run 1 makes an encrypted
# volume, run 2 finds it locked (the accelerator kept no key) and checks
# the refusals only a restart can produce.
#
# Prints KTAP with one result per test and run: `locked_create` (run 1's
# test_configfs_locked), `persistence_create` (run 1 reached its kill with
# every step before it passing; its VM dies with dpuemu, so its own result
# line never comes), `locked_verify` and `persistence_verify` (run 2's).
. "$(dirname "$0")/lib.sh"

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/persistence-test.sh" "$@"
	exit
fi
mkdir -p "$DPUBLK_CACHE/run"
images=$(mktemp -d "$DPUBLK_CACHE/run/persist.XXXXXX")
trap 'rm -rf "$images"' EXIT
tests="test_configfs_locked test_volume_persistence"
# Snapshots of the volume with many (make check's sample takes fewer).
snapshots=${DPUBLK_PERSIST_SNAPSHOTS:-100}
echo "TAP version 13"
echo "1..4"
pass=0 number=0
# report NAME RUN-OUTPUT TEST: one KTAP line for TEST's result in a run's
# output, whatever its number there.
report() {
	local name=$1 output=$2 test=$3 result
	number=$((number + 1))
	result=$(grep -E "^(not )?ok [0-9]+ $test( |$)" <<<"$output" | head -1)
	case $result in
	"ok "*"# SKIP"*) echo "not ok $number $name # skipped:${result#*# SKIP}" ;;
	"ok "*) echo "ok $number $name"; pass=$((pass + 1)) ;;
	"not ok "*) echo "not ok $number $name # ${result#*# }" ;;
	*) echo "not ok $number $name # no result (VM died or hung)" ;;
	esac
}
log "persistence test, run 1: create volumes, write, reload the module, kill -9 dpuemu"
run1=$("$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds 5 --ssd-size 512M --images "$images" -- \
	env DPUBLK_PERSIST_PHASE=create DPUBLK_PERSIST_SNAPSHOTS=$snapshots selftests/dpublk/run_tests.sh $tests 2>&1 |
	grep -E '^(ok|not ok|#)' || true)
sed 's/^/# run 1: /' <<<"$run1"
report locked_create "$run1" test_configfs_locked
number=$((number + 1))
if grep -q '^created' "$images/phase1" 2>/dev/null && ! grep -q '^not ok' <<<"$run1"; then
	echo "ok $number persistence_create"; pass=$((pass + 1))
else
	echo "not ok $number persistence_create # run 1 did not reach the kill of dpuemu"
fi
log "persistence test, run 2: restart dpuemu on the same images, volumes and data back"
run2=$("$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds 5 --ssd-size 512M --images "$images" -- \
	env DPUBLK_PERSIST_PHASE=verify DPUBLK_PERSIST_SNAPSHOTS=$snapshots selftests/dpublk/run_tests.sh $tests 2>&1 |
	grep -E '^(ok|not ok|#)' || true)
grep '^#' <<<"$run2" | grep -v '^# Totals' | sed 's/^/# run 2: /'
report locked_verify "$run2" test_configfs_locked
report persistence_verify "$run2" test_volume_persistence
echo "# Totals: pass:$pass fail:$((4 - pass)) xfail:0 xpass:0 skip:0 error:0"
