#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Zoned SSD functions: dpuemu's (--zoned-ssd, Documentation/zns.rst) and,
# for comparison, QEMU's own zoned NVMe namespace, both bound by Linux's
# stock nvme driver as host-managed zoned block devices. On each: the zone
# geometry Linux read, blkzone report/open/close/finish/reset with the
# states and write pointers they must leave, a write off the write pointer
# refused, and fio --zonemode=zbd with verify.
#
# Needs a kernel with CONFIG_BLK_DEV_ZONED=y and a VM started with, e.g.,
#   DPUBLK_DPUEMU_ARGS="--zoned-ssd 0:16M:12M:8:10" scripts/vm.sh --accelerator \
#       --ssds 1 --ssd-size 512M --qemu-zns 512M -- \
#       selftests/dpublk/run_tests.sh test_zns_function
# DPUBLK_ZNS_EXPECT (default "16M 12M 8 10") is what the dpuemu function
# must report: zone size, zone capacity, max open, max active.
# dpublk-timeout: 900
. "$(dirname "$0")/test_common.sh"

read -r want_size want_cap want_open want_active <<<"${DPUBLK_ZNS_EXPECT:-16M 12M 8 10}"
bytes() { numfmt --from=iec "$1"; }

zoned_devices() { # zoned_devices MODEL-PATTERN: host-managed nvme disks
	local q dev
	for q in /sys/block/nvme*n*/queue/zoned; do
		[ -e "$q" ] && [ "$(cat "$q")" = host-managed ] || continue
		dev=$(basename "$(dirname "$(dirname "$q")")")
		grep -q "$1" "/sys/block/$dev/device/model" 2>/dev/null && echo "/dev/$dev"
	done
}

# zone_line DEV SECTOR: the zone at SECTOR as "start len wp cap cond", in
# 512-byte sectors; blkzone prints the write pointer relative to the zone
# start, and the condition right-aligned in two columns.
zone_line() {
	blkzone report -o "$2" -c 1 "$1" |
		sed -n 's/.*start: \(0x[0-9a-f]*\), len \(0x[0-9a-f]*\), cap \(0x[0-9a-f]*\), wptr \(0x[0-9a-f]*\).*zcond: *\([0-9]*\).*/\1 \2 \4 \3 \5/p'
}

check_device() { # check_device DEV: zone operations, then fio verify
	local dev=$1 name zsect cap start len wp zc cond
	name=$(basename "$dev")
	zsect=$(cat "/sys/block/$name/queue/chunk_sectors")
	[ "$zsect" -gt 0 ] || fail "$dev: no zone size"
	blkzone reset "$dev" || fail "$dev: reset all"
	read -r start len wp cap cond <<<"$(zone_line "$dev" 0)"
	[ "$((start))" = 0 ] && [ "$((wp))" = 0 ] && [ "$cond" = 1 ] || fail "$dev: zone 0 after reset: $start $wp cond $cond"
	# Explicit open, close of an empty opened zone, finish, reset.
	blkzone open -o "$zsect" -c 1 "$dev" || fail "$dev: open"
	read -r _ _ _ _ cond <<<"$(zone_line "$dev" "$zsect")"
	[ "$cond" = 3 ] || fail "$dev: zone 1 is cond $cond after open, want 3 (explicitly open)"
	blkzone finish -o "$zsect" -c 1 "$dev" || fail "$dev: finish"
	read -r _ _ _ _ cond <<<"$(zone_line "$dev" "$zsect")"
	[ "$cond" = 14 ] || fail "$dev: zone 1 is cond $cond after finish, want 14 (full)"
	# A write at the pointer moves it; one past it is refused.
	dd if=/dev/urandom of="$dev" bs=64k count=1 oflag=direct status=none || fail "$dev: write at the pointer"
	read -r _ _ wp _ cond <<<"$(zone_line "$dev" 0)"
	[ "$((wp))" = 128 ] && [ "$cond" = 2 ] || fail "$dev: zone 0 wp $wp cond $cond after 64k, want 0x80, 2"
	dd if=/dev/zero of="$dev" bs=4k seek=64 count=1 oflag=direct status=none 2>/dev/null &&
		fail "$dev: a write off the write pointer succeeded"
	blkzone close -o 0 -c 1 "$dev" || fail "$dev: close"
	read -r _ _ wp _ cond <<<"$(zone_line "$dev" 0)"
	[ "$((wp))" = 128 ] && [ "$cond" = 4 ] || fail "$dev: zone 0 wp $wp cond $cond after close, want 0x80, 4"
	blkzone reset "$dev" || fail "$dev: reset all"
	# fio's zoned mode with verify: sequential writes across zones, then
	# random zone writes. io_size stays below the ranges' zone capacity, so
	# fio never has to reset a zone whose data it still has to verify.
	# libaio, not io_uring: io_uring submits with REQ_NOWAIT, a write that
	# meets a busy zone write plug comes back EAGAIN and is reissued from
	# an io-wq worker behind later writes to the zone, which then land off
	# the write pointer (Zone Invalid Write on QEMU's zoned namespace and on
	# dpuemu's alike).
	fio_verify "$dev" --ioengine=libaio --zonemode=zbd --rw=write --bs=64k --iodepth=8 --size=64M \
		--io_size=32M --max_open_zones="$(cat "/sys/block/$name/queue/max_open_zones")"
	fio_verify "$dev" --ioengine=libaio --zonemode=zbd --rw=randwrite --bs=4k --iodepth=4 --size=64M \
		--io_size=8M --offset=128M
	blkzone reset "$dev" || fail "$dev: reset all at the end"
}

command -v blkzone >/dev/null || skip "blkzone (util-linux) missing"
dmesg_mark
ours=$(zoned_devices "dpuemu")
if [ -z "$ours" ]; then
	dmesg | grep -q "not supported without CONFIG_BLK_DEV_ZONED" &&
		skip "the kernel lacks CONFIG_BLK_DEV_ZONED"
	skip "no zoned dpuemu SSD function (DPUBLK_DPUEMU_ARGS has no --zoned-ssd)"
fi
for dev in $ours; do
	name=$(basename "$dev")
	q=/sys/block/$name/queue
	[ "$(($(cat "$q/chunk_sectors") * 512))" = "$(bytes "$want_size")" ] ||
		fail "$dev: zone size $(cat "$q/chunk_sectors") sectors, want $want_size"
	[ "$(cat "$q/max_open_zones")" = "$want_open" ] || fail "$dev: max_open_zones $(cat "$q/max_open_zones"), want $want_open"
	[ "$(cat "$q/max_active_zones")" = "$want_active" ] || fail "$dev: max_active_zones $(cat "$q/max_active_zones"), want $want_active"
	read -r _ _ _ cap _ <<<"$(zone_line "$dev" 0)"
	[ "$((cap * 512))" = "$(bytes "$want_cap")" ] || fail "$dev: zone capacity $cap sectors, want $want_cap"
	[ "$(blkzone report "$dev" | wc -l)" = "$(cat "$q/nr_zones")" ] || fail "$dev: report and nr_zones differ"
	check_device "$dev"
done
qemu=$(zoned_devices "QEMU")
if [ -n "$qemu" ]; then
	for dev in $qemu; do check_device "$dev"; done
	diag "QEMU's zoned namespace passed the same checks"
else
	fail "no QEMU zoned namespace to compare with (vm.sh --qemu-zns SIZE)"
fi
dmesg_check_clean
diag "zoned SSD functions: $(echo $ours | wc -w) dpuemu, $(echo $qemu | wc -w) QEMU"
exit $KSFT_PASS
