#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Runs inside a private mount namespace made by in_chroot (scripts/lib.sh):
# bind-mounts what the chroot needs and executes the command in it. Never run
# it directly: outside a private namespace its mounts would leak to the host.
set -euo pipefail
root=$1; shift
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${DPUBLK_CACHE:-/var/cache/dpublk}
# Inside the chroot the cache lives at a fixed top-level path: virtme-ng
# hides /var/cache (and other /var paths) behind tmpfs mounts in the guest,
# and the guest must see the kernel's modules and the VM run directories.
chroot_cache=/dpublk-cache

mount --rbind /dev "$root/dev"
mount -t tmpfs -o size=50% tmpfs "$root/dev/shm"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount -t tmpfs tmpfs "$root/tmp"
mkdir -p "$root$top" "$root$chroot_cache"
mount --bind "$top" "$root$top"
mount --bind "$cache" "$root$chroot_cache"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# A clean environment: only our own DPUBLK_* settings and CI cross over.
passed=()
while IFS='=' read -r name _; do
	case $name in DPUBLK_*) passed+=("$name=${!name}") ;; esac
done < <(env)
# A path under the cache (DPUBLK_LOG_DIR of make check) is seen at the
# chroot's cache path.
for i in "${!passed[@]}"; do
	case ${passed[$i]} in DPUBLK_LOG_DIR="$cache"/*) passed[$i]=DPUBLK_LOG_DIR=$chroot_cache/${passed[$i]#DPUBLK_LOG_DIR="$cache"/} ;; esac
done
exec chroot "$root" /usr/bin/env -i \
	HOME=/root TERM="${TERM:-dumb}" CI="${CI:-}" \
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	LANG=C.UTF-8 "${passed[@]}" \
	DPUBLK_CACHE="$chroot_cache" DPUBLK_TOP="$top" DPUBLK_IN_CHROOT=1 "$@"
