#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Builds dpublk.ko against the cached kernel tree, inside the chroot, into
# build/module/. Prints the path of the module.
. "$(dirname "$0")/lib.sh"

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/build-module.sh"
	exit
fi
kdir=${DPUBLK_KDIR:?}
out="$DPUBLK_TOP/build/module"
mkdir -p "$out"
make -s -C "$kdir" M="$DPUBLK_TOP" MO="$out" LLVM=-19 -j"$(nproc)" modules >&2
ko="$out/drivers/block/dpublk/dpublk.ko"
[ -f "$ko" ] || die "module build produced no $ko"
echo "$ko"
