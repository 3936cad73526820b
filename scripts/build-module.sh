#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Builds dpublk.ko against the cached kernel tree, inside the chroot, into
# build/module/. Prints the path of the module.
. "$(dirname "$0")/lib.sh"

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	# A module built from the same committed sources with this script's
	# own build command against the same kernel tree (its directory name
	# carries its own key) is reused: a fresh clone of an unchanged tree
	# does not compile it again.
	ko="$DPUBLK_TOP/build/module/drivers/block/dpublk/dpublk.ko"
	key=$(tree_key Kbuild Makefile drivers rust/kernel-ext rust/nvme-shim scripts/build-module.sh)
	cached=
	[ -n "$key" ] && cached="$DPUBLK_CACHE/modules/$(basename "$kdir")-$key/dpublk.ko"
	if [ -n "$cached" ] && [ -f "$cached" ]; then
		install -D -m 644 "$cached" "$ko"
		log "dpublk.ko: reused $cached (same sources, same kernel tree)"
		echo "$ko"
		exit
	fi
	DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/build-module.sh"
	if [ -n "$cached" ]; then cache_keep "$ko" "$cached" 644 || log "dpublk.ko: could not keep a copy in $cached"; fi
	exit
fi
kdir=${DPUBLK_KDIR:?}
out="$DPUBLK_TOP/build/module"
mkdir -p "$out"
make -s -C "$kdir" M="$DPUBLK_TOP" MO="$out" LLVM=-19 -j"$(nproc)" modules >&2
ko="$out/drivers/block/dpublk/dpublk.ko"
[ -f "$ko" ] || die "module build produced no $ko"
echo "$ko"
