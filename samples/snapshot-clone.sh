#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Take a snapshot of a volume and clone it into a new writable volume.
#
#   snapshot-clone.sh VOLUME SNAPSHOT CLONE
. "$(dirname "$0")/common.sh"
[ $# = 3 ] || die "usage: $0 VOLUME SNAPSHOT CLONE"
volume=$1 snapshot=$2 clone=$3
need_dpublk
vol=$CFS/volumes/$volume
[ -d "$vol" ] || die "no volume $volume (mkdir $vol adopts an existing one)"
sync
mkdir "$vol/snapshots/$snapshot"
say "snapshot $snapshot of $volume taken (id $(cat "$vol/snapshots/$snapshot/id"))"
put "$vol/snapshots/$snapshot/clone" "$clone"
mkdir "$CFS/volumes/$clone"
say "clone $clone of $volume@$snapshot is /dev/$(cat "$CFS/volumes/$clone/device")"
