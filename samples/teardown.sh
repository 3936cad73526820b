#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Delete volumes (with their data and snapshots) and give every attached SSD
# back to the host's nvme driver.
#
#   teardown.sh VOLUME...   volumes to delete, clones before their origins
. "$(dirname "$0")/common.sh"
need_dpublk
for volume in "$@"; do
	vol=$CFS/volumes/$volume
	[ -d "$vol" ] || mkdir "$vol"
	put "$vol/enable" 0
	for snap in "$vol"/snapshots/*/; do
		[ -d "$snap" ] || continue
		put "$snap/destroy" 1
		rmdir "$snap"
	done
	put "$vol/destroy" 1
	rmdir "$vol"
	say "volume $volume deleted"
done
for ssd in "$CFS"/ssds/*/; do
	[ -d "$ssd" ] || continue
	[ "$(cat "$ssd/attach")" = 1 ] && put "$ssd/attach" 0
	rmdir "$ssd"
	say "SSD $(basename "$ssd") given back to the host"
done
