#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Data reduction on a volume with zero_detect=1, dedup=1 and compression
# lz4, then zstd (issue 8): data fio generated with dedupe_percentage=50
# and buffer_compress_percentage=50 reads back exactly, fio verify with the
# same options finds no mismatch, and the volume's counters report the
# reduction fio's parameters call for, within 10%.
#
# What fio generates (fio 3.39, bs=4k, buffer_compress_chunk=4k):
# - buffer_compress_percentage=50: every block is 2048 random bytes
#   followed by 2048 zero bytes. Compressed, that is the random half plus
#   a few bytes of codec framing, so compression saves about 2048 bytes
#   (half a block) per stored block.
# - dedupe_percentage=50 (dedupe_mode=repeat): each block is, with
#   probability 1/2, a repeat of the last unique block; about half of the
#   blocks are distinct, so dedup saves about half of the logical bytes.
# - With verify=crc32c fio refills the random part of each block from its
#   verify state, so no two blocks are equal (the buffer_compress layout
#   stays): dedup saves nothing on a verify run, compression still half a
#   block per block. That is why the accounting part writes fio's output
#   without verify, from a file (the same bytes read back exactly are the
#   verification there), and the verify part checks data only, with the
#   counters moving by what a verify run generates.
#
# Counters (volumes/<v>/stats, from dpuemu's Statistics):
# - logical_bytes: 4 KiB blocks mapped, zero-detected ones included;
# - zero_detect_saved_bytes: the zero-detected blocks;
# - dedup_saved_bytes: non-zero blocks minus distinct records, in bytes;
# - compression_saved_bytes: distinct records × 4 KiB minus their stored
#   (compressed, 16-byte rounded) size;
# - physical_bytes: whole 4 KiB blocks of the pool (data and metadata).
#   Compressed records are packed but never span two blocks, and a record
#   of just over 2048 bytes leaves no room for a second: each distinct
#   block takes a whole block. So physical shows the dedup saving and not
#   the compression saving; the test checks exactly that.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

MiB=$((1 << 20))
BLOCKS=8192 # 32 MiB of 4 KiB blocks per phase
DATA_OPTS=(--bs=4k --dedupe_percentage=50 --buffer_compress_percentage=50 --buffer_compress_chunk=4k
	--refill_buffers=1)
unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 2 ] || skip "needs 2 SSD functions"
dmesg_mark
load_dpublk_management

# within ACTUAL EXPECTED WHAT: fails unless ACTUAL is within 10% of EXPECTED.
within() {
	local actual=$1 expected=$2 what=$3
	[ $((actual * 10)) -ge $((expected * 9)) ] && [ $((actual * 10)) -le $((expected * 11)) ] ||
		fail "$what: $actual, expected $expected ± 10%"
}

# distinct_blocks FILE: the number of distinct 4 KiB blocks in FILE.
distinct_blocks() {
	python3 -c '
import sys
data = open(sys.argv[1], "rb").read()
print(len({data[i:i + 4096] for i in range(0, len(data), 4096)}))' "$1"
}

# reduce_on CODEC SSD-INDEX
reduce_on() {
	local codec=$1 index=$2 name=red-$1
	local ssd=r$index
	attach_ssd "$ssd" "$index"
	local dev
	dev=$(make_volume "$name" "$ssd" linear 256M thin=1 zero_detect=1 dedup=1 compression="$codec") || fail "$dev"

	# Phase 1: 32 MiB as fio generates them, then 4 MiB of zeroes.
	fio --name=gen --filename="$TEST_TMP/gen" --ioengine=psync --rw=write --size=32M \
		--randseed=$((index + 7)) "${DATA_OPTS[@]}" >"$TEST_TMP/gen.log" 2>&1 ||
		{ sed 's/^/#   /' "$TEST_TMP/gen.log"; fail "fio could not generate the data"; }
	dd if="$TEST_TMP/gen" of="$dev" bs=1M oflag=direct status=none || fail "writing fio's data to $dev"
	dd if=/dev/zero of="$dev" bs=1M seek=32 count=4 oflag=direct conv=fsync status=none || fail "writing zeroes"
	dd if="$dev" bs=1M count=32 iflag=direct status=none | cmp -s - "$TEST_TMP/gen" ||
		fail "$codec: fio's data does not read back"
	dd if="$dev" bs=1M skip=32 count=4 iflag=direct status=none | cmp -s - <(head -c 4M /dev/zero) ||
		fail "$codec: the zero blocks do not read back as zeroes"

	local distinct
	distinct=$(distinct_blocks "$TEST_TMP/gen")
	# fio did what its parameters say: about half of the blocks distinct.
	within "$distinct" $((BLOCKS / 2)) "$codec: distinct blocks fio generated"
	local logical zero dedup compressed physical
	logical=$(vol_stat "$name" logical_bytes) || fail "no logical_bytes"
	zero=$(vol_stat "$name" zero_detect_saved_bytes) || fail "no zero_detect_saved_bytes"
	dedup=$(vol_stat "$name" dedup_saved_bytes) || fail "no dedup_saved_bytes"
	compressed=$(vol_stat "$name" compression_saved_bytes) || fail "no compression_saved_bytes"
	physical=$(vol_stat "$name" physical_bytes) || fail "no physical_bytes"
	diag "$codec: logical $logical, zero-detected $zero, dedup saved $dedup, compression saved $compressed," \
		"physical $physical; $distinct of $BLOCKS blocks distinct"
	[ "$logical" = $((36 * MiB)) ] || fail "$codec: logical_bytes $logical after writing 36 MiB"
	[ "$zero" = $((4 * MiB)) ] || fail "$codec: zero_detect_saved_bytes $zero after 4 MiB of zeroes"
	# Dedup is exact (byte compare): every block that repeats an earlier one.
	[ "$dedup" = $(((BLOCKS - distinct) * 4096)) ] ||
		fail "$codec: dedup_saved_bytes $dedup, but $((BLOCKS - distinct)) of $BLOCKS blocks repeat one"
	# Against fio's parameters: half of 32 MiB deduplicated, half of each
	# remaining block compressed away, the rest whole blocks.
	within "$dedup" $((BLOCKS / 2 * 4096)) "$codec: dedup_saved_bytes"
	within "$compressed" $((BLOCKS / 2 * 2048)) "$codec: compression_saved_bytes"
	within "$physical" $((BLOCKS / 2 * 4096)) "$codec: physical_bytes"
	[ "$physical" -ge $((distinct * 4096)) ] || fail "$codec: physical_bytes $physical < one block per record"
	expect_stat "$name" exclusive_bytes -eq $((distinct * 4096 - compressed))

	# Phase 2: fio verify with the same data options, another 32 MiB.
	dpublk_fio_verify "$dev" --rw=write --offset=64M --size=32M "${DATA_OPTS[@]}"
	local dedup2 compressed2
	dedup2=$(vol_stat "$name" dedup_saved_bytes) || fail "no dedup_saved_bytes"
	compressed2=$(vol_stat "$name" compression_saved_bytes) || fail "no compression_saved_bytes"
	expect_stat "$name" logical_bytes -eq $((68 * MiB))
	[ "$dedup2" = "$dedup" ] || fail "$codec: a verify run (all blocks distinct) changed dedup_saved_bytes to $dedup2"
	within $((compressed2 - compressed)) $((BLOCKS * 2048)) "$codec: compression saved by the verify run"
	dd if="$dev" bs=1M count=32 iflag=direct status=none | cmp -s - "$TEST_TMP/gen" ||
		fail "$codec: fio's first data changed after the verify run"
	diag "$codec: the verify run saved $(((compressed2 - compressed) / MiB)) MiB by compression"

	remove_volume "$name"
	detach_ssd "$ssd"
}

reduce_on lz4 0
reduce_on zstd 1
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
