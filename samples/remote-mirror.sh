#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Mirror a local SSD onto a namespace of another machine's NVMe/TCP
# subsystem (Linux's nvmet-tcp, another accelerator): a raid10 volume with
# two copies, one on each. The accelerator reaches the remote with its own
# initiator; when the connection is lost the volume keeps serving from the
# local SSD, and when the remote is back its member is rebuilt.
#
#   remote-mirror.sh NAME SIZE SSD ADDRESS SERVICE SUBNQN [NSID]
#     NAME     volume name          SIZE  bytes, or with K/M/G/T
#     SSD      PCI address (0000:02:00.0) or serial number of a local SSD
#     ADDRESS  the remote's IPv4 or IPv6 address, SERVICE its TCP port,
#     SUBNQN   its subsystem NQN, NSID the namespace (default 1)
. "$(dirname "$0")/common.sh"
[ $# -ge 6 ] && [ $# -le 7 ] || die "usage: $0 NAME SIZE SSD ADDRESS SERVICE SUBNQN [NSID]"
name=$1 size=$2 ssd=$3
shift 3
need_dpublk
new_volume "$name" "$ssd" "tcp $*"
vol=$CFS/volumes/$name
put "$vol/layout" raid10
put "$vol/copies" 2
put "$vol/size" "$size"
enable_volume "$name"
say "ssds/$name-ssd1 is SSD $(cat "$CFS/ssds/$name-ssd1/index"): $(cat "$CFS/ssds/$name-ssd1/device")"
