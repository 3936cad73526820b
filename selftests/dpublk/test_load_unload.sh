#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Loads and unloads dpublk 20 times; the kernel must not complain once.
. "$(dirname "$0")/test_common.sh"

unload_dpublk
dmesg_mark
for round in $(seq 1 20); do
	insmod "$DPUBLK_MODULE" || fail "insmod failed in round $round"
	dpublk_loaded || fail "dpublk not in /proc/modules after insmod (round $round)"
	rmmod dpublk || fail "rmmod failed in round $round"
	! dpublk_loaded || fail "dpublk still loaded after rmmod (round $round)"
done
loads=$(dmesg_since_mark | grep -c "dpublk: loading:" || true)
unloads=$(dmesg_since_mark | grep -c 'dpublk: unloaded' || true)
[ "$loads" = 20 ] && [ "$unloads" = 20 ] ||
	fail "expected 20 load and 20 unload messages, saw $loads and $unloads"
dmesg_check_clean
modinfo "$DPUBLK_MODULE" | grep -q '^license: *GPL' || fail "modinfo shows no GPL license"
modinfo "$DPUBLK_MODULE" | grep -q '^alias: *pci:v00001AF4d000010F0' || fail "modinfo shows no PCI alias for the accelerator"
diag "20 load/unload rounds, kernel log clean"
exit $KSFT_PASS
