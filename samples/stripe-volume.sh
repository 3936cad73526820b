#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Attach local SSDs to the accelerator and create a striped volume on them.
#
#   stripe-volume.sh NAME SIZE SSD SSD [SSD...]
#     NAME  volume name          SIZE  bytes, or with K/M/G/T
#     SSD   PCI address (0000:02:00.0) or serial number of a local SSD
. "$(dirname "$0")/common.sh"
[ $# -ge 4 ] || die "usage: $0 NAME SIZE SSD SSD [SSD...]"
name=$1 size=$2
shift 2
need_dpublk
new_volume "$name" "$@"
vol=$CFS/volumes/$name
put "$vol/layout" stripe
put "$vol/chunk_size" 64K
put "$vol/size" "$size"
enable_volume "$name"
