#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# AES-XTS-256 volumes keep no plaintext on the media (issue 8): 64 MiB of a
# recognizable 64-byte ASCII line written to an encrypted volume, and
# flushed, read back exactly through the volume, while the host agent's
# scan of the raw SSD image finds the line nowhere. The same scan of an
# unencrypted control volume's SSD finds every copy written there, so the
# scan can fail. A second encrypted volume, with dedup and lz4 (dedup and
# compression work on plaintext, before encryption), leaks nothing either.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

MiB=$((1 << 20))
unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 3 ] || skip "needs 3 SSD functions"
dmesg_mark
load_dpublk_management

# 63 characters and a newline: 64 copies per 4 KiB block, never across two.
marker=$(printf 'dpublk plaintext marker %08x%08x: if you read this, it leaked' $RANDOM$RANDOM $RANDOM$RANDOM)
marker=${marker:0:63}
[ ${#marker} = 63 ] || fail "marker is ${#marker} characters"
hex=$(printf '%s' "$marker" | od -An -v -tx1 | tr -d ' \n')
yes "$marker" | head -c 64M >"$TEST_TMP/plain"
key() { od -An -v -N64 -tx1 /dev/urandom | tr -d ' \n'; }

attach_ssd e0 0
attach_ssd e1 1
attach_ssd c2 2
secret=$(make_volume secret e0 linear 128M thin=1 encryption=aes-xts-256 key="$(key)") || fail "$secret"
packed=$(make_volume packed e1 linear 128M thin=1 encryption=aes-xts-256 key="$(key)" dedup=1 compression=lz4) ||
	fail "$packed"
control=$(make_volume control c2 linear 128M thin=1) || fail "$control"
[ "$(cat "$DPUBLK_CFS/volumes/secret/encryption")" = aes-xts-256 ] || fail "secret is not encrypted"

dd if="$TEST_TMP/plain" of="$secret" bs=1M oflag=direct conv=fsync status=none || fail "writing $secret"
dd if="$TEST_TMP/plain" of="$packed" bs=1M count=16 oflag=direct conv=fsync status=none || fail "writing $packed"
dd if="$TEST_TMP/plain" of="$control" bs=1M count=16 oflag=direct conv=fsync status=none || fail "writing $control"
dd if="$secret" bs=1M count=64 iflag=direct status=none | cmp -s - "$TEST_TMP/plain" ||
	fail "the encrypted volume does not read back its plaintext"
dd if="$packed" bs=1M count=16 iflag=direct status=none | cmp -s - <(head -c 16M "$TEST_TMP/plain") ||
	fail "the encrypted lz4 volume does not read back its plaintext"
expect_stat secret logical_bytes -eq $((64 * MiB))
# Every block of the packed volume is the same plaintext: one record.
expect_stat packed dedup_saved_bytes -eq $((16 * MiB - 4096))

counts=$(host_request image-count "$hex" ssd0 ssd1 ssd2)
diag "marker copies on the raw images: $(echo $counts)"
count() { awk -v s="$1" '$1 == s { print $2 }' <<<"$counts"; }
[ "$(count ssd2)" = $((16 * MiB / 64)) ] ||
	fail "the control volume's SSD holds $(count ssd2) copies of the marker, expected $((16 * MiB / 64)): the scan does not work"
[ "$(count ssd0)" = 0 ] || fail "$(count ssd0) plaintext copies on the encrypted volume's SSD"
[ "$(count ssd1)" = 0 ] || fail "$(count ssd1) plaintext copies on the encrypted lz4 volume's SSD"

for v in secret packed control; do remove_volume "$v"; done
for s in e0 e1 c2; do detach_ssd "$s"; done
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
