#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A RAID6 volume with lz4 compression and AES-XTS-256 encryption: survives
# two failed SSDs, stores compressible data in less space, and never puts
# plaintext on the SSDs.
#
#   raid6-compressed-encrypted.sh NAME SIZE KEYFILE SSD SSD SSD SSD [SSD...]
#     KEYFILE  64 random bytes; created (from /dev/urandom, mode 0600) if
#              missing. Keep it: the volume opens only with this key.
. "$(dirname "$0")/common.sh"
[ $# -ge 7 ] || die "usage: $0 NAME SIZE KEYFILE SSD SSD SSD SSD [SSD...]"
name=$1 size=$2 keyfile=$3
shift 3
need_dpublk
if [ ! -f "$keyfile" ]; then
	(umask 077 && head -c 64 /dev/urandom >"$keyfile")
	say "new key written to $keyfile"
fi
[ "$(stat -c %s "$keyfile")" = 64 ] || die "$keyfile must hold exactly 64 bytes"
new_volume "$name" "$@"
vol=$CFS/volumes/$name
put "$vol/layout" raid6
put "$vol/size" "$size"
put "$vol/compression" lz4
put "$vol/encryption" aes-xts-256
put "$vol/key" "$(od -An -v -tx1 "$keyfile" | tr -d ' \n')"
enable_volume "$name"
say "volume $name: raid6 over $# SSDs, lz4, aes-xts-256"
