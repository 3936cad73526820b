#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A table of bad configfs input. Every case must fail with the errno
# Documentation/configfs.rst gives for it, log one line saying why (except
# the two the VFS refuses before the driver sees them), and change nothing:
# every attribute of the object it targets, the configfs tree, the
# accelerator's own volume list (volume_list), the dpublk disks and the
# data of a neighbouring volume (a checksum of a written pattern) are the
# same before and after. Classes: malformed values (empty, over 256 bytes,
# a page or more, NUL, control and non-ASCII bytes, leading zeros, leading
# and trailing spaces, signs, hexadecimal, u8, u32 and u64 overflow of every
# number), bad names for mkdir (".", "..", 32, 255 and 256 bytes, spaces,
# non-UTF-8), and the documented refusals of the lifecycle: changes while
# enabled, disable while the disk is open or mounted, expose 0 of an open
# snapshot disk, rmdir of an exposed snapshot, destroy with a dependent
# snapshot, ENOSPC on enable, service changes the accelerator refuses.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 4 ] || skip "needs 4 SSD functions"
dmesg_mark
load_dpublk_management
V=$DPUBLK_CFS/volumes
S=$DPUBLK_CFS/ssds
started=$(date +%s)

# errno names as the shell and coreutils print them.
declare -A MSG=(
	[EINVAL]="Invalid argument" [EBUSY]="Device or resource busy" [ENOENT]="No such file or directory"
	[EEXIST]="File exists" [EOPNOTSUPP]="Operation not supported" [ENOKEY]="Required key not available"
	[EACCES]="Permission denied" [ENODEV]="No such device" [EKEYREJECTED]="Key was rejected by service"
	[ENOSPC]="No space left on device" [ENAMETOOLONG]="File name too long"
)
cases=0
logged=() # "case errno what" of every case that must log a refusal, in order

# world OBJ: the state a refused case must leave alone.
world() {
	echo "== $1"
	object_state "$1"
	tree_state
	echo "== neighbour"
	dd if="$good" bs=1M count=1 iflag=direct status=none | md5sum
}
# fresh: a step that is not a case changed the world (cfs_write says so
# itself).
fresh() { _world_fresh=0; }

# expect ERRNO OBJ WHAT COMMAND...: COMMAND must fail with ERRNO and leave
# world OBJ as it was. With QUIET=1 the refusal comes from the VFS and logs
# nothing; otherwise the driver must log it.
expect() {
	local errno=$1 obj=$2 what=$3
	shift 3
	cases=$((cases + 1))
	# The state after the last case is the state before this one, unless
	# the object differs or a step in between changed something.
	if [ "$obj" != "${_world_obj:-}" ] || [ "${_world_fresh:-0}" != 1 ]; then
		world "$obj" >"$TEST_TMP/before"
	fi
	if "$@" 2>"$TEST_TMP/err"; then
		fail "case $cases ($what): succeeded, expected $errno"
	fi
	grep -q "${MSG[$errno]}" "$TEST_TMP/err" ||
		fail "case $cases ($what): expected $errno, got: $(cat "$TEST_TMP/err")"
	world "$obj" >"$TEST_TMP/after"
	if ! cmp -s "$TEST_TMP/before" "$TEST_TMP/after"; then
		diff "$TEST_TMP/before" "$TEST_TMP/after" | sed 's/^/#   /'
		fail "case $cases ($what): refused with $errno, but something changed"
	fi
	_world_obj=$obj _world_fresh=1
	[ "${QUIET:-0}" = 1 ] || logged+=("$cases $errno $what")
}
w() { printf '%s\n' "$2" >"$1"; }  # VALUE with echo's newline
wn() { printf '%s' "$2" >"$1"; }   # VALUE as is
# wb PATH FORMAT: the bytes printf FORMAT makes, in a single write(2).
wb() {
	# shellcheck disable=SC2059 # the format is the point
	printf "$2" >"$TEST_TMP/bytes"
	dd if="$TEST_TMP/bytes" of="$1" bs=1M count=1 status=none
}
# wlong PATH BYTES: BYTES bytes of '1' and a newline, in a single write(2).
wlong() {
	head -c "$(($2 - 1))" /dev/zero | tr '\0' 1 >"$TEST_TMP/bytes"
	echo >>"$TEST_TMP/bytes"
	dd if="$TEST_TMP/bytes" of="$1" bs=1M count=1 status=none
}
chars() { printf "$1%.0s" $(seq 1 "$2"); } # chars C N: N times C

# --- setup ---------------------------------------------------------------
# good: striped over SSDs 0 and 1, enabled, with a known pattern; the
# neighbour whose data every case checks. thin: on SSD 2, exists, with a
# snapshot. d: SSD 3, unattached (the nvme driver has it).
attach_ssd a 0
attach_ssd b 1
attach_ssd c 2
good=$(make_volume good a,b stripe 64M)
head -c 8M /dev/urandom >"$TEST_TMP/good.pattern"
dd if="$TEST_TMP/good.pattern" of="$good" bs=1M oflag=direct conv=fsync status=none || fail "write good"
thin=$(make_volume thin c linear 64M)
head -c 4M /dev/urandom | dd of="$thin" bs=1M oflag=direct conv=fsync status=none || fail "write thin"
mkdir "$V/thin/snapshots/s1" || fail "snapshot thin/s1"
cfs_write_busy "$V/thin/enable" 0
mkdir "$S/d" && cfs_write "$S/d/device" "$(ssd_pci 3)"
serial3=$(cat "$S/d/serial")
[ -n "$serial3" ] || fail "SSD 3 has no serial"

# --- SSD handles ---------------------------------------------------------
mkdir "$S/x" || fail "mkdir ssds/x"
fresh
X=$S/x
expect EINVAL "$X" "empty device" w "$X/device" ""
expect EINVAL "$X" "device: only a newline" wn "$X/device" $'\n'
expect ENODEV "$X" "unknown serial" w "$X/device" "NO-SUCH-SERIAL"
expect ENODEV "$X" "no function at that address" w "$X/device" "0000:fe:1f.7"
expect ENODEV "$X" "not an SSD function (the accelerator)" w "$X/device" "$(accelerator_pci)"
expect EEXIST "$X" "SSD already has a handle" w "$X/device" "$(ssd_pci 0)"
expect EEXIST "$X" "SSD already has a handle (by serial)" w "$X/device" "$serial3"
expect EINVAL "$X" "device with a leading space" w "$X/device" " $(ssd_pci 3)"
expect EINVAL "$X" "device with a trailing space" w "$X/device" "$(ssd_pci 3) "
expect EINVAL "$X" "device with a NUL" wb "$X/device" "$(ssd_pci 3)\\0\\n"
expect EINVAL "$X" "device with a CR" wb "$X/device" "$(ssd_pci 3)\\r\\n"
expect EINVAL "$X" "device with two newlines" wb "$X/device" "$(ssd_pci 3)\\n\\n"
expect EINVAL "$X" "device with an escape sequence" wb "$X/device" "\\033[0m$(ssd_pci 3)"
expect EINVAL "$X" "device not UTF-8" wb "$X/device" "\\xff\\xfe"
expect EINVAL "$X" "device in UTF-8 beyond ASCII" wb "$X/device" "s\\xc3\\xa9rie"
expect EINVAL "$X" "device of 257 bytes" w "$X/device" "$(chars 0 257)"
expect EINVAL "$X" "device of a page" wlong "$X/device" 4096
expect EINVAL "$X" "device of two pages" wlong "$X/device" 8192
expect EINVAL "$X" "attach without device" w "$X/attach" 1
A=$S/a
for bad in 2 yes 01 00 " 1" "1 " +1 -1 0x1 4294967297 18446744073709551617 true; do
	expect EINVAL "$A" "attach '$bad'" w "$A/attach" "$bad"
done
expect EINVAL "$A" "attach 1 with a NUL" wb "$A/attach" "1\\0"
expect EINVAL "$A" "attach 1 with a tab" wb "$A/attach" "1\\t"
expect EINVAL "$A" "attach of a page" wlong "$A/attach" 4096
expect EBUSY "$A" "double attach" w "$A/attach" 1
expect EINVAL "$S/d" "detach of a detached SSD" w "$S/d/attach" 0
expect EBUSY "$A" "device change while attached" w "$A/device" "$(ssd_pci 3)"
expect EBUSY "$A" "detach of an SSD holding a volume" w "$A/attach" 0
C=$S/c
for bad in "" "melt" "fail_reads" "fail_reads 0" "fail_reads 0 1 2" "fail_reads 00 1" "fail_reads 0 01" \
	"fail_reads -1 1" "fail_reads +1 1" "fail_reads 0x10 1" "fail_reads 18446744073709551616 1" \
	"fail_reads 0  1" " clear" "clear " "CLEAR" "clear 0 0"; do
	expect EINVAL "$C" "fault '$bad'" w "$C/fault" "$bad"
done
expect EINVAL "$C" "fault beyond the SSD" w "$C/fault" "fail_reads 18446744073709551615 1"
expect EINVAL "$C" "fault range overflowing 64 bits" w "$C/fault" "corrupt 1 18446744073709551615"
expect EINVAL "$X" "fault on an unattached handle" w "$X/fault" clear
expect EINVAL "$S" "mkdir ssds with a ':'" mkdir "$S/bad:name"
expect EINVAL "$S" "mkdir ssds with a space" mkdir "$S/bad name"
expect EINVAL "$S" "mkdir ssds with a newline" mkdir "$S/bad"$'\n'"name"
expect EINVAL "$S" "mkdir ssds not UTF-8" mkdir "$S/"$'\xff\xfe'
expect EINVAL "$S" "mkdir ssds of 32 bytes" mkdir "$S/$(chars x 32)"
expect EINVAL "$S" "mkdir ssds of 255 bytes" mkdir "$S/$(chars x 255)"
QUIET=1 expect ENAMETOOLONG "$S" "mkdir ssds of 256 bytes" mkdir "$S/$(chars x 256)"
QUIET=1 expect EEXIST "$S" "mkdir ssds/." mkdir "$S/."
QUIET=1 expect EEXIST "$S" "mkdir ssds/.." mkdir "$S/.."
QUIET=1 expect EEXIST "$S" "mkdir of an existing SSD handle" mkdir "$S/a"
# Attaching a mounted SSD.
dev3=$(ssd_blockdev "$(ssd_pci 3)") || fail "SSD 3 has no nvme disk"
mkfs.ext4 -q -F "$dev3" || fail "mkfs on $dev3"
mkdir -p "$TEST_TMP/mnt" && mount "$dev3" "$TEST_TMP/mnt" || fail "mount $dev3"
fresh
on_exit "umount '$TEST_TMP/mnt' 2>/dev/null"
expect EBUSY "$S/d" "attach of a mounted SSD" w "$S/d/attach" 1
umount "$TEST_TMP/mnt"
exec 8<"$dev3"
expect EBUSY "$S/d" "attach of an SSD held open" w "$S/d/attach" 1
exec 8<&-
[ "$(ssd_driver "$(ssd_pci 3)")" = nvme ] || fail "the refused attach unbound SSD 3"

# --- settings of a volume not created yet ----------------------------------
mkdir "$V/bad" || fail "mkdir volumes/bad"
fresh
B=$V/bad
# Every number: malformed, signed, hexadecimal, padded, with leading zeros,
# and overflowing 8, 32 and 64 bits to a value that would be valid if
# truncated (258 = 2 mod 256; 4294967298 = 2 mod 2^32; 2^64 + 2).
for attr in size copies ec_k ec_m chunk_size; do
	for bad in "" " 2" "2 " "+2" "-2" "0x2" "02" "00" "2.0" "2e3" "two" "1 2" \
		18446744073709551618 99999999999999999999999; do
		expect EINVAL "$B" "$attr '$bad'" w "$B/$attr" "$bad"
	done
	expect EINVAL "$B" "$attr with a NUL" wb "$B/$attr" "4\\0"
	expect EINVAL "$B" "$attr with a tab" wb "$B/$attr" "\\t4"
	expect EINVAL "$B" "$attr not UTF-8" wb "$B/$attr" "4\\xa0"
	expect EINVAL "$B" "$attr of 300 digits" w "$B/$attr" "$(chars 1 300)"
	expect EINVAL "$B" "$attr of a page" wlong "$B/$attr" 4096
	expect EINVAL "$B" "$attr of 64 KiB" wlong "$B/$attr" 65536
done
expect EINVAL "$B" "copies 4" w "$B/copies" 4
expect EINVAL "$B" "copies 258 (2 mod 256)" w "$B/copies" 258
expect EINVAL "$B" "copies 4294967298 (2 mod 2^32)" w "$B/copies" 4294967298
expect EINVAL "$B" "copies 2^64 + 2" w "$B/copies" 18446744073709551618
expect EINVAL "$B" "ec_k 0" w "$B/ec_k" 0
expect EINVAL "$B" "ec_k 17" w "$B/ec_k" 17
expect EINVAL "$B" "ec_k 260 (4 mod 256)" w "$B/ec_k" 260
expect EINVAL "$B" "ec_k 4294967300 (4 mod 2^32)" w "$B/ec_k" 4294967300
expect EINVAL "$B" "ec_m 9" w "$B/ec_m" 9
expect EINVAL "$B" "ec_m 258 (2 mod 256)" w "$B/ec_m" 258
expect EINVAL "$B" "ec_m 4294967298 (2 mod 2^32)" w "$B/ec_m" 4294967298
expect EINVAL "$B" "chunk not a power of two" w "$B/chunk_size" 3000
expect EINVAL "$B" "chunk 2K" w "$B/chunk_size" 2K
expect EINVAL "$B" "chunk 2M" w "$B/chunk_size" 2M
expect EINVAL "$B" "chunk 2^32 (0 mod 2^32)" w "$B/chunk_size" 4294967296
expect EINVAL "$B" "chunk 4194304K (2^32)" w "$B/chunk_size" 4194304K
expect EINVAL "$B" "chunk 2^32 + 64K (64K mod 2^32)" w "$B/chunk_size" 4295032832
expect EINVAL "$B" "chunk 2^64 + 64K" w "$B/chunk_size" 18446744073709617152
expect EINVAL "$B" "size 0" w "$B/size" 0
expect EINVAL "$B" "size 0M" w "$B/size" 0M
expect EINVAL "$B" "size not a multiple of 4096" w "$B/size" 1000
expect EINVAL "$B" "size 2^64 (0 mod 2^64)" w "$B/size" 18446744073709551616
expect EINVAL "$B" "size 16777216T (2^64)" w "$B/size" 16777216T
expect EINVAL "$B" "size 17179869184G (2^64)" w "$B/size" 17179869184G
expect EINVAL "$B" "size with two suffixes" w "$B/size" 64MM
expect EINVAL "$B" "size with a unit" w "$B/size" 64MiB
expect EINVAL "$B" "size with a P suffix" w "$B/size" 1P
expect EINVAL "$B" "size with a space before the suffix" w "$B/size" "64 M"
# Choices and booleans.
for bad in raid5 RAID6 " raid6" "raid6 " "raid6,ec" 0 ""; do
	expect EINVAL "$B" "layout '$bad'" w "$B/layout" "$bad"
done
expect EINVAL "$B" "layout with a NUL" wb "$B/layout" "raid6\\0"
for bad in gzip LZ4 " lz4" "lz4 " "lz4,zstd" 1; do
	expect EINVAL "$B" "compression '$bad'" w "$B/compression" "$bad"
done
for bad in aes-cbc AES-XTS-256 "aes-xts-256 " 1; do
	expect EINVAL "$B" "encryption '$bad'" w "$B/encryption" "$bad"
done
for attr in thin dedup zero_detect enable destroy; do
	for bad in 2 yes 01 " 1" "1 " +1 -0 0x1 4294967297 18446744073709551617; do
		expect EINVAL "$B" "$attr '$bad'" w "$B/$attr" "$bad"
	done
	expect EINVAL "$B" "$attr with a NUL" wb "$B/$attr" "1\\0"
	expect EINVAL "$B" "$attr of a page" wlong "$B/$attr" 4096
done
# SSD lists.
expect ENOENT "$B" "unknown SSD handle" w "$B/ssds" nosuch
expect EINVAL "$B" "SSD named twice" w "$B/ssds" c,c
expect EINVAL "$B" "empty SSD list" w "$B/ssds" ""
expect EINVAL "$B" "SSD list with a trailing comma" w "$B/ssds" "c,"
expect EINVAL "$B" "SSD list with a leading comma" w "$B/ssds" ",c"
expect EINVAL "$B" "SSD list with a space" w "$B/ssds" "c, d"
expect EINVAL "$B" "SSD handle without a device" w "$B/ssds" x
expect EINVAL "$B" "SSD list not UTF-8" wb "$B/ssds" "c,\\xff"
expect EINVAL "$B" "key on an unencrypted volume" w "$B/key" "$(chars 1 128)"
# Enabling something incomplete or impossible.
expect EINVAL "$B" "enable without SSDs and size" w "$B/enable" 1
cfs_write "$B/ssds" c
expect EINVAL "$B" "enable without a size" w "$B/enable" 1
cfs_write "$B/size" 64M
cfs_write "$B/layout" raid6
expect EINVAL "$B" "too few SSDs for raid6" w "$B/enable" 1
cfs_write "$B/layout" ec
cfs_write "$B/ec_k" 2
cfs_write "$B/ec_m" 1
expect EINVAL "$B" "ec k+m does not match the SSDs" w "$B/enable" 1
cfs_write "$B/layout" raid10
cfs_write "$B/copies" 3
expect EINVAL "$B" "too few SSDs for raid10 with 3 copies" w "$B/enable" 1
cfs_write "$B/layout" stripe
expect EINVAL "$B" "too few SSDs for stripe" w "$B/enable" 1
cfs_write "$B/layout" linear
cfs_write "$B/ssds" d
expect EINVAL "$B" "SSD not attached" w "$B/enable" 1
cfs_write "$B/ssds" a
expect EBUSY "$B" "SSD already used by another volume" w "$B/enable" 1
cfs_write "$B/ssds" c
expect EBUSY "$B" "SSD used by a disabled volume with a snapshot" w "$B/enable" 1
[ "$(cat "$B/state")" = absent ] || fail "a refused create left a volume behind"
expect ENOENT "$B" "destroy of a volume never created" w "$B/destroy" 1
expect EINVAL "$B" "destroy 0" w "$B/destroy" 0
expect ENOENT "$B" "scrub of a volume never created" w "$B/scrub" check
expect ENOENT "$B" "replace on a volume never created" w "$B/replace" "a b"
expect ENOENT "$B/snapshots" "snapshot of a volume never created" mkdir "$B/snapshots/s1"
# Encryption keys.
mkdir "$V/enc" || fail "mkdir volumes/enc"
fresh
E=$V/enc
cfs_write "$E/encryption" aes-xts-256
cfs_write "$E/ssds" c
cfs_write "$E/size" 64M
expect ENOKEY "$E" "encryption without a key" w "$E/enable" 1
expect EINVAL "$E" "key of the wrong length" w "$E/key" 0123456789abcdef
expect EINVAL "$E" "key of 127 digits" w "$E/key" "$(chars 1 127)"
expect EINVAL "$E" "key of 129 digits" w "$E/key" "$(chars 1 129)"
expect EINVAL "$E" "key not hexadecimal" w "$E/key" "$(chars g 128)"
expect EINVAL "$E" "key with a space" w "$E/key" "$(chars 1 64) $(chars 2 63)"
expect EINVAL "$E" "key with a NUL" wb "$E/key" "$(chars 1 64)\\0$(chars 2 63)"
expect EINVAL "$E" "key with a 0x prefix" w "$E/key" "0x$(chars 1 64)$(chars 2 62)"
expect EINVAL "$E" "all-zero key" w "$E/key" "$(chars 0 128)"
expect EINVAL "$E" "key with equal halves" w "$E/key" "$(chars 1 64)$(chars 1 64)"
expect EINVAL "$E" "key of a page" wlong "$E/key" 4096
cfs_write "$E/key" "$(chars 1 64)$(chars 2 64)"
expect EACCES "$E" "reading the key back" cat "$E/key"
# Names.
for name in "a b" "a:b" "a*b" $'a\tb' $'\xc3\xa9' $'\xff' "$(chars v 32)" "$(chars v 255)"; do
	expect EINVAL "$V" "volume name '$name'" mkdir "$V/$name"
done
QUIET=1 expect ENAMETOOLONG "$V" "volume name of 256 bytes" mkdir "$V/$(chars v 256)"
QUIET=1 expect EEXIST "$V" "mkdir volumes/." mkdir "$V/."
QUIET=1 expect EEXIST "$V" "mkdir volumes/.." mkdir "$V/.."
QUIET=1 expect EEXIST "$V" "mkdir of an existing volume handle" mkdir "$V/good"

# --- the enabled volume ----------------------------------------------------
G=$V/good
expect EBUSY "$G" "resize while enabled" w "$G/size" 128M
expect EBUSY "$G" "layout change while enabled" w "$G/layout" raid10
expect EBUSY "$G" "compression change while enabled" w "$G/compression" lz4
expect EBUSY "$G" "dedup change while enabled" w "$G/dedup" 1
expect EBUSY "$G" "SSD list change while enabled" w "$G/ssds" a
expect EBUSY "$G" "destroy while enabled" w "$G/destroy" 1
expect EINVAL "$G" "enable 2 while enabled" w "$G/enable" 2
expect EINVAL "$G" "scrub with an unknown action" w "$G/scrub" fix
expect EINVAL "$G" "replace with one name" w "$G/replace" a
expect EINVAL "$G" "replace with three names" w "$G/replace" "a b c"
expect EINVAL "$G" "replace of an SSD by itself" w "$G/replace" "a a"
expect EINVAL "$G" "replace of an SSD that is not a member" w "$G/replace" "c d"
expect ENOENT "$G" "replace with an unknown handle" w "$G/replace" "a nosuch"
QUIET=1 expect EBUSY "$V" "rmdir while enabled" rmdir "$G"
# Disable while the disk is open, and while it is mounted.
exec 8<"$good"
expect EBUSY "$G" "disable while the disk is open" w "$G/enable" 0
exec 8<&-
cfs_write "$V/thin/enable" 1
thin=/dev/$(cat "$V/thin/device")
expect EBUSY "$V/thin/snapshots/s1" "revert while the volume is enabled" w "$V/thin/snapshots/s1/revert" 1
mkfs.ext4 -q -F "$thin" || fail "mkfs on $thin"
# Read-only, so nothing writes to it (its statistics are compared).
mount -o ro "$thin" "$TEST_TMP/mnt" || fail "mount $thin"
fresh
expect EBUSY "$V/thin" "disable while the disk is mounted" w "$V/thin/enable" 0
umount "$TEST_TMP/mnt"
cfs_write_busy "$V/thin/enable" 0

# --- a volume that exists, disabled, with a snapshot --------------------------
T=$V/thin
expect EBUSY "$T" "layout change of an existing volume" w "$T/layout" raid10
expect EBUSY "$T" "thin change of an existing volume" w "$T/thin" 0
expect EBUSY "$T" "encryption change of an existing volume" w "$T/encryption" aes-xts-256
expect EBUSY "$T" "SSD list change of an existing volume" w "$T/ssds" d
expect EBUSY "$T" "chunk change of an existing volume" w "$T/chunk_size" 64K
expect EOPNOTSUPP "$T" "compression change the accelerator refuses" w "$T/compression" zstd
expect EOPNOTSUPP "$T" "dedup change the accelerator refuses" w "$T/dedup" 1
expect EOPNOTSUPP "$T" "zero_detect change the accelerator refuses" w "$T/zero_detect" 1
expect EBUSY "$T" "destroy with a dependent snapshot" w "$T/destroy" 1
N=$T/snapshots/s1
expect EINVAL "$N" "clone with a bad name" w "$N/clone" "bad name"
expect EINVAL "$N" "clone with an empty name" w "$N/clone" ""
expect EINVAL "$N" "clone name not UTF-8" wb "$N/clone" "\\xff"
expect EEXIST "$N" "clone named like an existing volume" w "$N/clone" good
expect EEXIST "$N" "clone named like a snapshot" w "$N/clone" s1
expect EINVAL "$N" "revert 0" w "$N/revert" 0
expect EINVAL "$N" "destroy 0" w "$N/destroy" 0
expect EINVAL "$N" "expose 2" w "$N/expose" 2
expect EINVAL "$N" "expose with a NUL" wb "$N/expose" "1\\0"
expect EEXIST "$T/snapshots" "snapshot named like a volume" mkdir "$T/snapshots/good"
expect EINVAL "$T/snapshots" "snapshot name of 32 bytes" mkdir "$T/snapshots/$(chars s 32)"
expect EINVAL "$T/snapshots" "snapshot name not UTF-8" mkdir "$T/snapshots/"$'\xfe'
QUIET=1 expect EEXIST "$T/snapshots" "mkdir snapshots/." mkdir "$T/snapshots/."
QUIET=1 expect EEXIST "$T/snapshots" "mkdir of an existing snapshot handle" mkdir "$N"
# An exposed snapshot: its disk open, it cannot be hidden, destroyed or
# forgotten (rmdir used to succeed and leave the disk without a handle).
cfs_write "$N/expose" 1
read -r _ sdisk <"$N/expose"
[ -b "/dev/$sdisk" ] || fail "no /dev/$sdisk for the exposed snapshot"
exec 8<"/dev/$sdisk"
expect EBUSY "$N" "expose 0 while the snapshot disk is open" w "$N/expose" 0
exec 8<&-
expect EBUSY "$N" "destroy of an exposed snapshot" w "$N/destroy" 1
QUIET=1 expect EBUSY "$T/snapshots" "rmdir of an exposed snapshot" rmdir "$N"
cfs_write_busy "$N/expose" 0
[ ! -e "/dev/$sdisk" ] || fail "/dev/$sdisk still there after expose 0"

# --- ENOSPC: a fully provisioned volume larger than its SSD -----------------
cfs_write "$S/d/attach" 1
mkdir "$V/big" || fail "mkdir volumes/big"
fresh
cfs_write "$V/big/ssds" d
cfs_write "$V/big/thin" 0
cfs_write "$V/big/size" 1G
expect ENOSPC "$V/big" "fully provisioned volume larger than its SSD" w "$V/big/enable" 1
# The refused create left the SSD free: a volume that fits is made on it.
cfs_write "$V/big/size" 64M
cfs_write "$V/big/enable" 1
remove_volume big

elapsed=$(($(date +%s) - started))
diag "$cases bad inputs refused with the documented errno, nothing changed ($elapsed s)"
[ "$cases" -ge 300 ] || fail "only $cases cases"

# Every refusal said why in the kernel log, in order, with its errno.
mapfile -t lines < <(dmesg_since_mark | grep -E 'dpublk: (ssds|volumes|snapshots)[^ ]*: .*\(E[A-Z]+\)$')
[ "${#lines[@]}" = "${#logged[@]}" ] || {
	printf '%s\n' "${lines[@]}" | tail -5 | sed 's/^/#   logged: /'
	fail "${#lines[@]} refusals logged, expected ${#logged[@]} (one per case the driver refuses)"
}
for i in "${!logged[@]}"; do
	read -r n errno what <<<"${logged[$i]}"
	[[ "${lines[$i]}" == *"($errno)" ]] || fail "case $n ($what): logged '${lines[$i]}', expected a line ending in ($errno)"
done
diag "${#logged[@]} refusals logged, one line each with its errno"

# The system still works: the good volume's data is unchanged and fio
# verify passes on it; the handles agree with the accelerator; everything
# tears down.
cfs_consistent >"$TEST_TMP/consistency" || { sed 's/^/#   /' "$TEST_TMP/consistency"; fail "configfs and the accelerator disagree"; }
dd if="$good" of="$TEST_TMP/good.back" bs=1M count=8 iflag=direct status=none || fail "read good"
cmp -s "$TEST_TMP/good.pattern" "$TEST_TMP/good.back" || fail "the good volume's data changed"
dpublk_fio_verify "$good" --size=32M --offset=16M
rmdir "$B" "$E" || fail "rmdir of disabled handles"
cfs_write "$N/destroy" 1
rmdir "$N" || fail "rmdir of a destroyed snapshot"
remove_volume thin
remove_volume good
detach_ssd a
detach_ssd b
detach_ssd c
detach_ssd d
rmdir "$X" || fail "rmdir of an unconfigured SSD handle"
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
