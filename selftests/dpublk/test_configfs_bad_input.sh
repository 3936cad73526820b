#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A table of bad configfs input: every write gets its documented errno and
# a dmesg line, nothing half-happens, and afterwards the system still works
# and the data of another (enabled) volume is unchanged.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 4 ] || skip "needs 4 SSD functions"
dmesg_mark
load_dpublk_management
V=$DPUBLK_CFS/volumes
S=$DPUBLK_CFS/ssds

# errno names as the shell prints them.
declare -A MSG=(
	[EINVAL]="Invalid argument" [EBUSY]="Device or resource busy" [ENOENT]="No such file or directory"
	[EEXIST]="File exists" [EOPNOTSUPP]="Operation not supported" [ENOKEY]="Required key not available"
	[EACCES]="Permission denied" [ENODEV]="No such device" [EKEYREJECTED]="Key was rejected by service"
)
cases=0
# expect ERRNO WHAT COMMAND...: COMMAND must fail with ERRNO.
expect() {
	local errno=$1 what=$2
	shift 2
	cases=$((cases + 1))
	if "$@" 2>"$TEST_TMP/err"; then
		fail "case $cases ($what): succeeded, expected $errno"
	fi
	grep -q "${MSG[$errno]}" "$TEST_TMP/err" ||
		fail "case $cases ($what): expected $errno, got: $(cat "$TEST_TMP/err")"
}
w() { printf '%s\n' "$2" >"$1"; }     # write VALUE with echo's newline
wn() { printf '%s' "$2" >"$1"; }      # write VALUE as is

# The good volume: striped over SSDs 0 and 1, enabled, with known data.
attach_ssd a 0
attach_ssd b 1
attach_ssd c 2
good=$(make_volume good a,b stripe 64M)
head -c 8M /dev/urandom >"$TEST_TMP/good.pattern"
dd if="$TEST_TMP/good.pattern" of="$good" bs=1M oflag=direct conv=fsync status=none || fail "write good"
mkdir "$S/d" && cfs_write "$S/d/device" "$(ssd_pci 3)"

# --- SSD handles --------------------------------------------------------
mkdir "$S/x" || fail "mkdir ssds/x"
expect EINVAL "empty device" w "$S/x/device" ""
expect ENODEV "unknown serial" w "$S/x/device" "NO-SUCH-SERIAL"
expect ENODEV "no function at that address" w "$S/x/device" "0000:fe:1f.7"
expect ENODEV "not an SSD function (the accelerator)" w "$S/x/device" "$(accelerator_pci)"
expect EEXIST "SSD already has a handle" w "$S/x/device" "$(ssd_pci 0)"
expect EINVAL "attach without device" w "$S/x/attach" 1
expect EINVAL "attach value 2" w "$S/a/attach" 2
expect EINVAL "attach value yes" w "$S/a/attach" yes
expect EBUSY "double attach" w "$S/a/attach" 1
expect EINVAL "detach of a detached SSD" w "$S/d/attach" 0
expect EBUSY "device change while attached" w "$S/a/device" "$(ssd_pci 3)"
expect EBUSY "detach of an SSD holding a volume" w "$S/a/attach" 0
expect EINVAL "mkdir ssds with a bad name" mkdir "$S/bad:name"
expect EINVAL "mkdir ssds with a 32-byte name" mkdir "$S/$(printf 'x%.0s' $(seq 1 32))"
# Attaching a mounted SSD.
dev3=$(ssd_blockdev "$(ssd_pci 3)") || fail "SSD 3 has no nvme disk"
mkfs.ext4 -q -F "$dev3" || fail "mkfs on $dev3"
mkdir -p "$TEST_TMP/mnt" && mount "$dev3" "$TEST_TMP/mnt" || fail "mount $dev3"
on_exit "umount '$TEST_TMP/mnt' 2>/dev/null"
expect EBUSY "attach of a mounted SSD" w "$S/d/attach" 1
umount "$TEST_TMP/mnt"
[ "$(ssd_driver "$(ssd_pci 3)")" = nvme ] || fail "the refused attach unbound SSD 3"

# --- volume settings ----------------------------------------------------
mkdir "$V/bad" || fail "mkdir volumes/bad"
expect EINVAL "empty size" w "$V/bad/size" ""
expect EINVAL "negative size" w "$V/bad/size" -1
expect EINVAL "non-numeric size" w "$V/bad/size" abc
expect EINVAL "overflowing size" w "$V/bad/size" 18446744073709551616
expect EINVAL "overflowing size with suffix" w "$V/bad/size" 16777216T
expect EINVAL "size not a multiple of 4096" w "$V/bad/size" 1000
expect EINVAL "zero size" w "$V/bad/size" 0
expect EINVAL "overlong value" w "$V/bad/size" "$(printf '1%.0s' $(seq 1 300))"
expect EINVAL "size with trailing garbage" w "$V/bad/size" "64M "
expect EINVAL "unknown layout" w "$V/bad/layout" raid5
expect EOPNOTSUPP "layout not implemented" w "$V/bad/layout" lograid
expect EINVAL "raid10 copies 4" w "$V/bad/copies" 4
expect EINVAL "ec_k 0" w "$V/bad/ec_k" 0
expect EINVAL "ec_m 9" w "$V/bad/ec_m" 9
expect EINVAL "chunk not a power of two" w "$V/bad/chunk_size" 3000
expect EINVAL "thin yes" w "$V/bad/thin" yes
expect EINVAL "unknown compression" w "$V/bad/compression" gzip
expect EINVAL "dedup 2" w "$V/bad/dedup" 2
expect EINVAL "unknown encryption" w "$V/bad/encryption" aes-cbc
expect ENOENT "unknown SSD handle" w "$V/bad/ssds" nosuch
expect EINVAL "SSD named twice" w "$V/bad/ssds" c,c
expect EINVAL "empty SSD list" w "$V/bad/ssds" ""
expect EINVAL "key on an unencrypted volume" w "$V/bad/key" "$(printf '1%.0s' $(seq 1 128))"
expect EINVAL "enable without SSDs and size" w "$V/bad/enable" 1
cfs_write "$V/bad/ssds" c
expect EINVAL "enable without a size" w "$V/bad/enable" 1
cfs_write "$V/bad/size" 64M
cfs_write "$V/bad/layout" raid6
expect EINVAL "too few SSDs for raid6" w "$V/bad/enable" 1
cfs_write "$V/bad/layout" ec
cfs_write "$V/bad/ec_k" 2
cfs_write "$V/bad/ec_m" 1
expect EINVAL "ec k+m does not match the SSDs" w "$V/bad/enable" 1
cfs_write "$V/bad/layout" stripe
expect EINVAL "too few SSDs for stripe" w "$V/bad/enable" 1
cfs_write "$V/bad/layout" linear
cfs_write "$V/bad/ssds" d
expect EINVAL "SSD not attached" w "$V/bad/enable" 1
cfs_write "$V/bad/ssds" a
expect EBUSY "SSD already used by another volume" w "$V/bad/enable" 1
[ "$(cat "$V/bad/state")" = absent ] || fail "a refused create left a volume behind"
expect ENOENT "destroy of a volume never created" w "$V/bad/destroy" 1
expect EINVAL "destroy 0" w "$V/bad/destroy" 0
expect ENOENT "snapshot of a volume never created" mkdir "$V/bad/snapshots/s1"
# Encryption keys.
mkdir "$V/enc" || fail "mkdir volumes/enc"
cfs_write "$V/enc/encryption" aes-xts-256
cfs_write "$V/enc/ssds" c
cfs_write "$V/enc/size" 64M
expect ENOKEY "encryption without a key" w "$V/enc/enable" 1
expect EINVAL "key of the wrong length" w "$V/enc/key" 0123456789abcdef
expect EINVAL "key not hexadecimal" w "$V/enc/key" "$(printf 'g%.0s' $(seq 1 128))"
expect EINVAL "all-zero key" w "$V/enc/key" "$(printf '0%.0s' $(seq 1 128))"
half=$(printf '1%.0s' $(seq 1 64))
expect EINVAL "key with equal halves" w "$V/enc/key" "$half$half"
cfs_write "$V/enc/key" "$(printf '1%.0s' $(seq 1 64))$(printf '2%.0s' $(seq 1 64))"
expect EACCES "reading the key back" cat "$V/enc/key"
# Names.
expect EINVAL "volume name with a space" mkdir "$V/a b"
expect EINVAL "volume name of 32 bytes" mkdir "$V/$(printf 'v%.0s' $(seq 1 32))"

# --- changes while enabled ----------------------------------------------
expect EBUSY "resize while enabled" w "$V/good/size" 128M
expect EBUSY "layout change while enabled" w "$V/good/layout" raid10
expect EBUSY "compression change while enabled" w "$V/good/compression" lz4
expect EBUSY "SSD list change while enabled" w "$V/good/ssds" a
expect EBUSY "destroy while enabled" w "$V/good/destroy" 1
expect EBUSY "rmdir while enabled" rmdir "$V/good"
mkdir "$V/good/snapshots/snap0" || fail "snapshot of the good volume"
expect EBUSY "revert while enabled" w "$V/good/snapshots/snap0/revert" 1
expect EINVAL "clone with a bad name" w "$V/good/snapshots/snap0/clone" "bad name"
expect EEXIST "clone named like an existing volume" w "$V/good/snapshots/snap0/clone" good

diag "$cases bad inputs refused with the documented errno"
[ "$cases" -ge 40 ] || fail "only $cases cases"
# Every refusal said why in the kernel log.
refusals=$(dmesg_since_mark | grep -cE 'dpublk: (ssds|volumes|snapshots)[^ ]*: .*\(E[A-Z]+\)')
[ "$refusals" -ge 40 ] || fail "only $refusals refusals logged with a reason"

# The system still works: the good volume's data is unchanged and fio
# verify passes on it; everything tears down.
dd if="$good" of="$TEST_TMP/good.back" bs=1M count=8 iflag=direct status=none || fail "read good"
cmp -s "$TEST_TMP/good.pattern" "$TEST_TMP/good.back" || fail "the good volume's data changed"
dpublk_fio_verify "$good" --size=32M --offset=16M
rmdir "$V/good/snapshots/snap0"
rmdir "$V/bad" "$V/enc" || fail "rmdir of disabled handles"
cfs_write "$V/good/enable" 0
mkdir "$V/good/snapshots/snap0" && cfs_write "$V/good/snapshots/snap0/destroy" 1 && rmdir "$V/good/snapshots/snap0"
remove_volume good
detach_ssd a
detach_ssd b
detach_ssd c
rmdir "$S/d" "$S/x" || fail "rmdir of unattached SSD handles"
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
