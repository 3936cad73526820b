#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Builds (once) the Debian trixie chroot that holds the kernel toolchain,
# QEMU with vfio-user, virtme-ng and the VM's test programs.
# Result: $DPUBLK_CACHE/chroot-trixie-<key>; prints its path.
. "$(dirname "$0")/lib.sh"

root=$(chroot_dir)
if [ -f "$root/.dpublk-ready" ]; then
	echo "$root"
	exit 0
fi
need_root
ensure_host_packages
mkdir -p "$DPUBLK_CACHE"
exec 9>"$DPUBLK_CACHE/.chroot.lock"
flock 9
[ -f "$root/.dpublk-ready" ] && { echo "$root"; exit 0; }

work="$root.partial"
[ -d "$work" ] && chroot_safe_remove "$work"
log "debootstrap $CHROOT_SUITE into $work"
start=$(date +%s)
debootstrap --variant=minbase --include="$(echo $CHROOT_PKGS_BASE | tr ' ' ,)" \
	"$CHROOT_SUITE" "$work" "$CHROOT_MIRROR" >"$DPUBLK_CACHE/debootstrap.log" 2>&1 ||
	die "debootstrap failed, see $DPUBLK_CACHE/debootstrap.log"

cat >"$work/etc/apt/sources.list" <<SRC
deb $CHROOT_MIRROR $CHROOT_SUITE main
deb $CHROOT_MIRROR $CHROOT_SUITE-backports main
SRC
# Keep the chroot small: no manuals or recommends.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
	>"$work/etc/apt/apt.conf.d/90dpublk"
touch "$work/.dpublk-ready" # in_chroot insists on it; removed again below on failure
install_pkgs() {
	unshare --mount --propagation private -- "$DPUBLK_TOP/scripts/chroot-exec.sh" "$work" \
		/bin/sh -c "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && $*"
}
log "installing packages in the chroot"
# The second batch also prefers backports: the first one pulled newer
# libraries (libelf) from there, and stable's -dev packages would downgrade them.
install_pkgs "apt-get install -y -qq -t $CHROOT_SUITE-backports $CHROOT_PKGS_BPO && \
	apt-get install -y -qq -t $CHROOT_SUITE-backports $(echo $CHROOT_PKGS) && apt-get clean" \
	>"$DPUBLK_CACHE/chroot-packages.log" 2>&1 || {
	rm -f "$work/.dpublk-ready"
	die "package install failed, see $DPUBLK_CACHE/chroot-packages.log"
}
# Record what we got, for the build keys and for humans.
install_pkgs "dpkg-query -W rustc bindgen clang-19 qemu-system-x86 virtme-ng fio" \
	>"$work/.dpublk-versions" 2>/dev/null || true
mv "$work" "$root"
log "chroot ready in $(( $(date +%s) - start )) s: $root"
echo "$root"
