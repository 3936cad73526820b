# SPDX-License-Identifier: GPL-2.0
# Shared by the dpublk sample scripts: configfs paths and checked writes.
# Each sample stops at the first error and says what it did.

set -euo pipefail
CFS=${DPUBLK_CONFIGFS:-/sys/kernel/config/dpublk}

say() { printf '%s: %s\n' "$(basename "$0")" "$*"; }
die() { say "error: $*" >&2; exit 1; }

# put FILE VALUE: writes a configfs attribute; on failure shows the kernel's
# reason (dpublk logs one line per refused write).
put() {
	if ! printf '%s\n' "$2" >"$1" 2>/dev/null; then
		die "writing '$2' to ${1#"$CFS"/} failed: $(dmesg | grep dpublk | tail -1)"
	fi
}

need_dpublk() {
	[ "$(id -u)" = 0 ] || die "run as root"
	mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
	[ -d "$CFS/volumes" ] || die "dpublk is not loaded (insmod dpublk.ko)"
}

# attach NAME DEVICE: hands the SSD (PCI address or serial number) to the
# accelerator under the handle ssds/NAME. A remote SSD's DEVICE is
# "tcp ADDRESS SERVICE SUBNQN [NSID]": the accelerator connects to it and
# attaches it when `device` is written.
attach() {
	local dir=$CFS/ssds/$1
	[ -d "$dir" ] || mkdir "$dir"
	if [ "$(cat "$dir/attach")" != 1 ]; then
		put "$dir/device" "$2"
		case $2 in
		"tcp "*) ;;
		*) put "$dir/attach" 1 ;;
		esac
	fi
	say "SSD $2 attached to the accelerator as ssds/$1 ($(cat "$dir/capacity") bytes)"
}

# new_volume NAME SSD...: attaches each SSD as ssds/NAME-ssdN and makes
# volumes/NAME on them (settings follow; then enable_volume).
new_volume() {
	local name=$1 ssd handles=()
	shift
	for ssd in "$@"; do
		attach "$name-ssd${#handles[@]}" "$ssd"
		handles+=("$name-ssd${#handles[@]}")
	done
	mkdir "$CFS/volumes/$name"
	put "$CFS/volumes/$name/ssds" "$(IFS=,; echo "${handles[*]}")"
}

# enable_volume NAME: enables a configured volume and prints its disk.
enable_volume() {
	put "$CFS/volumes/$1/enable" 1
	say "volume $1 is /dev/$(cat "$CFS/volumes/$1/device") ($(cat "$CFS/volumes/$1/size") bytes, $(cat "$CFS/volumes/$1/layout"))"
}
