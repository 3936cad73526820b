#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Take the NVMe/TCP target down (namespaces, subsystems, ports), delete
# volumes (with their data and snapshots) and give every attached SSD back
# to the host's nvme driver.
#
#   teardown.sh VOLUME...   volumes to delete, clones before their origins
. "$(dirname "$0")/common.sh"
need_dpublk
# The NVMe/TCP target first: a volume it exports cannot be deleted.
for ns in "$CFS"/nvmf/subsystems/*/namespaces/*/; do
	[ -d "$ns" ] || continue
	put "$ns/enable" 0
	rmdir "$ns"
done
for dir in "$CFS"/nvmf/subsystems/*/ "$CFS"/nvmf/ports/*/; do
	[ -d "$dir" ] || continue
	put "$dir/enable" 0
	rmdir "$dir"
	say "NVMe/TCP ${dir#"$CFS"/nvmf/} removed"
done
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
