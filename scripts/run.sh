#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `make run`, the main job: boots the VM with the emulated accelerator,
# loads dpublk, and shows what happened (scripts/guest/demo.sh).
. "$(dirname "$0")/lib.sh"
need_root
"$DPUBLK_TOP/scripts/setup.sh"
# Four local SSDs; the demo hands them to the accelerator through configfs.
vm_opts=(--accelerator --ssds 4 --ssd-size 512M)
[ "${DPUBLK_IOMMU:-0}" = 1 ] && vm_opts+=(--iommu)
exec "$DPUBLK_TOP/scripts/vm.sh" "${vm_opts[@]}" -- scripts/guest/demo.sh
