#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Everything `make run` and `make check` need, idempotent and cached:
# host packages, the chroot, the kernel tree, the module and the userspace.
. "$(dirname "$0")/lib.sh"
need_root
start=$(date +%s)
"$DPUBLK_TOP/scripts/setup-host.sh"
"$DPUBLK_TOP/scripts/setup-chroot.sh" >/dev/null
"$DPUBLK_TOP/scripts/setup-kernel.sh" >/dev/null
"$DPUBLK_TOP/scripts/build-module.sh" >/dev/null
(cd "$DPUBLK_TOP" && cargo build --release --workspace --quiet)
log "setup complete in $(($(date +%s) - start)) s (caches in $DPUBLK_CACHE)"
