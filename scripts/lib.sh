# SPDX-License-Identifier: GPL-2.0
# Common settings for the dpublk scripts. Source it; do not run it.
#
# Every heavy result lives under $DPUBLK_CACHE (default /var/cache/dpublk),
# in a directory whose name carries a hash of what produced it, so a change
# of inputs builds a new entry and an unchanged input reuses the old one.

set -euo pipefail

DPUBLK_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DPUBLK_CACHE=${DPUBLK_CACHE:-/var/cache/dpublk}
export DPUBLK_TOP DPUBLK_CACHE

log() { printf '[dpublk %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
	[ "$(id -u)" = 0 ] || die "this step needs root (it installs packages and uses chroot)"
}

# hash_of FILE... : a short content hash of the given files and strings.
hash_of() {
	local item
	for item in "$@"; do
		if [ -f "$item" ]; then cat "$item"; else printf '%s\n' "$item"; fi
	done | sha256sum | cut -c1-16
}

# tree_key PATH... : a key for build results of these paths of the
# repository: the hash of git's record of every tracked file under them
# (path and blob id). Prints nothing when there is no key to trust: not a
# git checkout, or a file under the paths modified or untracked (a build
# of an uncommitted tree is never cached).
tree_key() {
	local listing
	git -C "$DPUBLK_TOP" rev-parse --git-dir >/dev/null 2>&1 || return 0
	[ -z "$(git -C "$DPUBLK_TOP" status --porcelain --untracked-files=all -- "$@" 2>/dev/null)" ] || return 0
	listing=$(git -C "$DPUBLK_TOP" ls-files -s -- "$@") || return 0
	[ -n "$listing" ] || return 0
	printf '%s\n' "$listing" | sha256sum | cut -c1-16
}

# cache_keep FILE CACHED MODE : keeps a build result keyed by tree_key:
# FILE copied to CACHED (through a temporary name, so a reader never finds
# half a file), then only the ten newest entries of the directory that
# holds CACHED's directory are left.
cache_keep() {
	local file=$1 cached=$2 mode=$3
	install -D -m "$mode" "$file" "$cached.tmp" && mv "$cached.tmp" "$cached" || return 1
	ls -1dt "$(dirname "$(dirname "$cached")")"/*/ 2>/dev/null | tail -n +11 | xargs -r rm -rf
}

# Host packages the scripts themselves need (never the toolchain: that lives
# in the chroot so kernel, module and VM share one environment).
host_packages_ok() {
	command -v debootstrap >/dev/null && command -v unshare >/dev/null && command -v flock >/dev/null
}

ensure_host_packages() {
	host_packages_ok && return 0
	need_root
	log "installing host packages (debootstrap)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap util-linux >/dev/null
}

# The chroot: a Debian trixie userland with the kernel toolchain, QEMU with
# vfio-user and the VM's test programs. Its key is this list plus the script
# that builds it.
CHROOT_SUITE=trixie
CHROOT_MIRROR=${DPUBLK_MIRROR:-http://deb.debian.org/debian}
CHROOT_PKGS_BASE="ca-certificates"
# Installed from trixie-backports (newer QEMU, rustc, bindgen).
CHROOT_PKGS_BPO="qemu-system-x86 rustc rust-src bindgen rustfmt clang-19 lld-19 llvm-19 libclang-19-dev"
CHROOT_PKGS="flex bison bc libelf-dev libssl-dev make cpio xz-utils zstd kmod python3 libc6-dev gcc
 virtme-ng fio nvme-cli busybox-static udev iproute2 e2fsprogs xfsprogs mdadm cryptsetup lvm2
 thin-provisioning-tools util-linux pciutils procps psmisc coreutils findutils grep sed gawk
 dmsetup kmod time jq"
chroot_key() {
	hash_of "$DPUBLK_TOP/scripts/setup-chroot.sh" "$CHROOT_SUITE" "$CHROOT_PKGS_BASE" \
		"$CHROOT_PKGS_BPO" "$CHROOT_PKGS"
}
chroot_dir() { echo "$DPUBLK_CACHE/chroot-$CHROOT_SUITE-$(chroot_key)"; }

# in_chroot CMD... : run CMD inside the chroot, in a private mount namespace.
# The bind mounts (/dev, /proc, /sys, a tmpfs on /dev/shm, the repository and
# the cache at their own paths) exist only in that namespace, so they vanish
# when the command exits, however it exits, and a removal of the chroot from
# the host namespace can never reach through them into the host's /dev.
in_chroot() {
	local root
	root=$(chroot_dir)
	[ -f "$root/.dpublk-ready" ] || die "chroot $root is not set up (run scripts/setup-chroot.sh)"
	unshare --mount --propagation private -- "$DPUBLK_TOP/scripts/chroot-exec.sh" "$root" "$@"
}

# chroot_safe_remove DIR : delete a chroot only when nothing is mounted under it.
chroot_safe_remove() {
	local dir=$1
	if findmnt -rn -o TARGET | grep -q "^$dir\(/\|$\)"; then
		die "refusing to delete $dir: something is still mounted under it (findmnt -R $dir)"
	fi
	rm -rf --one-file-system "$dir"
}
