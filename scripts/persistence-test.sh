#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Volumes persist on the accelerator (selftests/dpublk/test_volume_persistence.sh)
# across two VM runs over the same SSD images: run 1 creates volumes, a
# snapshot and an encrypted volume through configfs, writes and flushes
# data, reloads the module (the volumes come back at once), then kills
# dpuemu -9; run 2 restarts dpuemu on the same images, loads the module and
# finds the volumes and their data again. Prints run 2's KTAP.
. "$(dirname "$0")/lib.sh"

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/persistence-test.sh" "$@"
	exit
fi
mkdir -p "$DPUBLK_CACHE/run"
images=$(mktemp -d "$DPUBLK_CACHE/run/persist.XXXXXX")
trap 'rm -rf "$images"' EXIT
log "persistence test, run 1: create volumes, write, reload the module, kill -9 dpuemu"
"$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds 4 --ssd-size 512M --images "$images" -- \
	env DPUBLK_PERSIST_PHASE=create selftests/dpublk/run_tests.sh test_volume_persistence 2>&1 |
	grep -E '^(ok|not ok|#)' | sed 's/^/# run 1: /' || true
grep -q '^created' "$images/phase1" 2>/dev/null || log "run 1 did not finish its part (see above)"
log "persistence test, run 2: restart dpuemu on the same images, volumes and data back"
"$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds 4 --ssd-size 512M --images "$images" -- \
	env DPUBLK_PERSIST_PHASE=verify selftests/dpublk/run_tests.sh test_volume_persistence
