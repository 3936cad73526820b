#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The configfs root appears with the module and disappears without it.
. "$(dirname "$0")/test_common.sh"

ensure_configfs
unload_dpublk
[ ! -e "$CONFIGFS/dpublk" ] || fail "$CONFIGFS/dpublk exists before the module is loaded"
dmesg_mark
load_dpublk
[ -d "$CONFIGFS/dpublk" ] || fail "$CONFIGFS/dpublk missing after insmod"
version=$(cat "$CONFIGFS/dpublk/version") || fail "cannot read version"
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "version '$version' is not x.y.z"
grep -qx pci "$CONFIGFS/dpublk/features" || fail "features does not list pci"
if (echo 1 >"$CONFIGFS/dpublk/version") 2>/dev/null; then
	fail "writing the read-only version attribute succeeded"
fi
unload_dpublk
[ ! -e "$CONFIGFS/dpublk" ] || fail "$CONFIGFS/dpublk still there after rmmod"
dmesg_check_clean
diag "configfs root came and went (version $version)"
exit $KSFT_PASS
