#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Volumes persist on the accelerator (selftests/dpublk/test_volume_persistence.sh)
# across two VM runs over the same SSD images: run 1 creates volumes, a
# snapshot and an encrypted volume through configfs, writes and flushes
# data, reloads the module (the volumes come back at once), then kills
# dpuemu -9; run 2 restarts dpuemu on the same images, loads the module and
# finds the volumes and their data again.
#
# Prints KTAP with one result per run: `persistence_create` (run 1 reached
# its kill with every step before it passing; its VM dies with dpuemu, so
# its own result line never comes) and `persistence_verify` (run 2's test).
. "$(dirname "$0")/lib.sh"

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/persistence-test.sh" "$@"
	exit
fi
mkdir -p "$DPUBLK_CACHE/run"
images=$(mktemp -d "$DPUBLK_CACHE/run/persist.XXXXXX")
trap 'rm -rf "$images"' EXIT
echo "TAP version 13"
echo "1..2"
log "persistence test, run 1: create volumes, write, reload the module, kill -9 dpuemu"
run1=$("$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds 4 --ssd-size 512M --images "$images" -- \
	env DPUBLK_PERSIST_PHASE=create selftests/dpublk/run_tests.sh test_volume_persistence 2>&1 |
	grep -E '^(ok|not ok|#)' || true)
sed 's/^/# run 1: /' <<<"$run1"
pass=0
if grep -q '^created' "$images/phase1" 2>/dev/null && ! grep -q '^not ok' <<<"$run1"; then
	echo "ok 1 persistence_create"; pass=$((pass + 1))
else
	echo "not ok 1 persistence_create # run 1 did not reach the kill of dpuemu"
fi
log "persistence test, run 2: restart dpuemu on the same images, volumes and data back"
run2=$("$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds 4 --ssd-size 512M --images "$images" -- \
	env DPUBLK_PERSIST_PHASE=verify selftests/dpublk/run_tests.sh test_volume_persistence 2>&1 |
	grep -E '^(ok|not ok|#)' || true)
grep '^#' <<<"$run2" | grep -v '^# Totals' | sed 's/^/# run 2: /'
result=$(grep -E '^(not )?ok 1 test_volume_persistence' <<<"$run2" || true)
case $result in
"ok 1 test_volume_persistence # SKIP"*) echo "ok 2 persistence_verify # SKIP${result#*# SKIP}" ;;
"ok 1 "*) echo "ok 2 persistence_verify"; pass=$((pass + 1)) ;;
"not ok 1 "*) echo "not ok 2 persistence_verify # ${result#*# }" ;;
*) echo "not ok 2 persistence_verify # run 2 gave no result (VM died or hung)" ;;
esac
echo "# Totals: pass:$pass fail:$((2 - pass)) xfail:0 xpass:0 skip:0 error:0"
