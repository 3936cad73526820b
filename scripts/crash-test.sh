#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The dpuemu crash test across two VM runs (see
# selftests/dpublk/test_dpuemu_crash.sh): run 1 writes and flushes a pattern
# and kills dpuemu -9 under fio; run 2 restarts dpuemu on the same SSD images
# and reads the pattern back. Prints run 2's KTAP; exits non-zero on failure.
. "$(dirname "$0")/lib.sh"

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/crash-test.sh" "$@"
	exit
fi
mkdir -p "$DPUBLK_CACHE/run"
images=$(mktemp -d "$DPUBLK_CACHE/run/crash.XXXXXX")
trap 'rm -rf "$images"' EXIT
head -c 8M /dev/urandom >"$images/pattern"
log "crash test, run 1: write, flush, kill -9 dpuemu under fio"
"$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds 1 --images "$images" -- \
	env DPUBLK_CRASH_PHASE=write selftests/dpublk/run_tests.sh test_dpuemu_crash 2>&1 |
	grep -E '^(ok|not ok|#)' | sed 's/^/# run 1: /' || true
log "crash test, run 2: restart dpuemu on the same images and read back"
"$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds 1 --images "$images" -- \
	env DPUBLK_CRASH_PHASE=verify selftests/dpublk/run_tests.sh test_dpuemu_crash
