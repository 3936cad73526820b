#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `make run`, the main job: boots the VM with the emulated accelerator,
# loads dpublk, and shows what happened (scripts/guest/demo.sh).
. "$(dirname "$0")/lib.sh"
need_root
"$DPUBLK_TOP/scripts/setup.sh"
# Until configfs volumes exist, namespace 1 of the accelerator passes through
# to the last SSD's image; that SSD belongs to the accelerator from the start.
export DPUBLK_DPUEMU_ARGS=${DPUBLK_DPUEMU_ARGS:---passthrough-ssd 3}
vm_opts=(--accelerator --ssds 4)
[ "${DPUBLK_IOMMU:-0}" = 1 ] && vm_opts+=(--iommu)
exec "$DPUBLK_TOP/scripts/vm.sh" "${vm_opts[@]}" -- scripts/guest/demo.sh
