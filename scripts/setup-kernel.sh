#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Builds (once) a Linux 7.3 tree with CONFIG_RUST from Debian's
# linux-source-7.3 package, configured by virtme-ng's defconfig plus our
# fragment. Runs the build inside the chroot, so the same rustc, bindgen and
# clang build the kernel and, later, the module.
# Result: $DPUBLK_CACHE/kernel-<debian version>-<variant>-<key>; prints its path.
#
#   DPUBLK_KERNEL_VARIANT=default|debug   (debug adds KASAN, lockdep, ...)
#   DPUBLK_KERNEL_DEB_VERSION=<version>   pin another linux-source-7.3 version
. "$(dirname "$0")/lib.sh"

# The version this project was developed and measured with. If the archive
# no longer has it, the newest 7.3.x it offers is used instead.
PINNED_DEB_VERSION=7.3.4-1~bpo13+1
# Bump when a change to this script changes the tree it builds (commands,
# make variables); comments and logging do not count. It is part of the key.
KERNEL_RECIPE=1
variant=${DPUBLK_KERNEL_VARIANT:-default}
case $variant in
default) fragments="$DPUBLK_TOP/scripts/kconfig/dpublk.config" ;;
debug) fragments="$DPUBLK_TOP/scripts/kconfig/dpublk.config $DPUBLK_TOP/scripts/kconfig/debug.config" ;;
*) die "DPUBLK_KERNEL_VARIANT must be default or debug, not '$variant'" ;;
esac

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	"$DPUBLK_TOP/scripts/setup-chroot.sh" >/dev/null
	# A cheap check first: a ready tree for the pinned version needs no chroot.
	exec bash -c '. "$1/scripts/lib.sh"; in_chroot "$1/scripts/setup-kernel.sh"' _ "$DPUBLK_TOP"
fi

# --- inside the chroot from here on ---
toolchain=$(rustc --version; bindgen --version; clang-19 --version | head -1)
pick_version() {
	local wanted=${DPUBLK_KERNEL_DEB_VERSION:-$PINNED_DEB_VERSION}
	if apt-cache madison linux-source-7.3 | awk '{print $3}' | grep -qxF "$wanted"; then
		echo "$wanted"
	else
		apt-cache madison linux-source-7.3 | awk '{print $3}' | sort -V | tail -1
	fi
}
key_for() { hash_of "$1" "$variant" $fragments "recipe=$KERNEL_RECIPE" "$toolchain"; }

# Reuse a ready tree without asking the archive when the pinned one is built.
deb_version=${DPUBLK_KERNEL_DEB_VERSION:-$PINNED_DEB_VERSION}
tree="$DPUBLK_CACHE/kernel-${deb_version//[~+]/_}-$variant-$(key_for "$deb_version")"
if [ -f "$tree/.dpublk-ready" ]; then
	echo "$tree"
	exit 0
fi
apt-get update -qq >/dev/null 2>&1 || true
deb_version=$(pick_version)
[ -n "$deb_version" ] || die "no linux-source-7.3 in the archive"
[ "$deb_version" = "${DPUBLK_KERNEL_DEB_VERSION:-$PINNED_DEB_VERSION}" ] ||
	log "warning: linux-source-7.3 $PINNED_DEB_VERSION is gone, using $deb_version"
tree="$DPUBLK_CACHE/kernel-${deb_version//[~+]/_}-$variant-$(key_for "$deb_version")"
if [ -f "$tree/.dpublk-ready" ]; then
	echo "$tree"
	exit 0
fi

exec 9>"$DPUBLK_CACHE/.kernel.lock"
flock 9
start=$(date +%s)
if [ ! -f "$tree/Makefile" ]; then
	log "fetching linux-source-7.3 $deb_version"
	rm -rf "$tree" "$tree.unpack"
	mkdir -p "$tree.unpack"
	debs="$DPUBLK_CACHE/debs"
	deb="$debs/linux-source-7.3_${deb_version}_all.deb"
	mkdir -p "$debs"
	if [ ! -f "$deb" ]; then
		(cd "$debs" && apt-get download -qq "linux-source-7.3=$deb_version" 2>/dev/null) ||
			die "cannot download linux-source-7.3=$deb_version"
		mv "$debs"/linux-source-7.3_*"${deb_version##*:}"*_all.deb "$deb" 2>/dev/null || true
	fi
	dpkg-deb -x "$deb" "$tree.unpack/pkg" || die "cannot unpack $deb"
	tarball=$(ls "$tree.unpack"/pkg/usr/src/linux-source-7.3*.tar.*)
	mkdir -p "$tree"
	tar -xaf "$tarball" -C "$tree" --strip-components=1
	rm -rf "$tree.unpack"
	echo "$deb_version" >"$tree/.dpublk-deb-version"
fi

cd "$tree"
export LIBCLANG_PATH=/usr/lib/llvm-19/lib
make_args=(LLVM=-19 -j"$(($(nproc) + 1))")
log "configuring ($variant) in $tree"
{
	virtme-configkernel --arch x86_64 --defconfig
	# shellcheck disable=SC2086
	scripts/kconfig/merge_config.sh -m .config $fragments
	make "${make_args[@]}" olddefconfig
} >"$tree/.dpublk-config.log" 2>&1 || die "configuring failed, see $tree/.dpublk-config.log"
make "${make_args[@]}" rustavailable >/dev/null || die "Rust is not available for this tree"
missing=0
for frag in $fragments; do
	while IFS= read -r line; do
		case $line in
		CONFIG_*=y | CONFIG_*=m)
			grep -qxF "$line" .config || { log "config did not stick: $line ($(grep "^${line%%=*}=" .config || echo unset))"; missing=1; } ;;
		CONFIG_*=n)
			! grep -q "^${line%%=*}=[ym]" .config || { log "config did not stick: $line"; missing=1; } ;;
		esac
	done <"$frag"
done
[ "$missing" = 0 ] || die "kernel config is not what the fragment asks for"

log "building bzImage and modules (this is the slow step: about 15 minutes on 2 cores)"
make "${make_args[@]}" bzImage modules >"$tree/.dpublk-build.log" 2>&1 || {
	tail -40 "$tree/.dpublk-build.log" >&2
	die "kernel build failed, see $tree/.dpublk-build.log"
}
# vng wants modules installed next to the build when it runs a tree.
make "${make_args[@]}" modules_install INSTALL_MOD_PATH="$tree/.mods" >/dev/null 2>&1 || true
touch "$tree/.dpublk-ready"
log "kernel tree ready in $(( $(date +%s) - start )) s: $tree"
echo "$tree"
