#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The demo, inside the VM: what `make run` shows. Every step prints the
# command it runs and what came of it.
set -u
step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
. "$DPUBLK_TOP/selftests/dpublk/test_common.sh" >/dev/null 2>&1 || true
. "$DPUBLK_TOP/selftests/dpublk/configfs_common.sh" >/dev/null 2>&1 || true
samples=$DPUBLK_TOP/samples
cd /tmp || exit 1 # the repository is read-only in the guest; fio keeps state files
fio_summary='.jobs[0] | "wrote \(.write.io_bytes / 1048576) MiB at \(.write.iops | floor) IOPS, verified \(.read.io_bytes / 1048576) MiB, errors: \(.error)"'

step "kernel, and dpuemu's PCI functions (1af4:10f0 accelerator, 1af4:10f1 local SSDs)"
uname -r
lspci -nn -d 1af4:10f0; lspci -nn -d 1af4:10f1
[ -n "$(lspci -n -d 1af4:10f0)" ] || { echo "(no accelerator attached)"; exit 1; }

step "local SSDs, bound by the stock nvme driver like real drives"
for bdf in $(ssd_pci_addresses); do
	printf '%s  %-8s %s\n' "$bdf" "$(ssd_driver "$bdf")" "$(ssd_blockdev "$bdf" 2>/dev/null)"
done

step "load dpublk: it binds the accelerator; configfs has ssds/ and volumes/"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
run insmod "$DPUBLK_MODULE"
dmesg | grep -E '\] dpublk( |:)' | tail -4
dmesg | grep -E '# dpublk_.*pass:' | sed 's/^.*\] /kunit: /' | tail -6
run ls /sys/kernel/config/dpublk/

mapfile -t ssds < <(ssd_pci_addresses)
step "hand four SSDs to the accelerator and make a RAID6 volume with lz4, dedup and encryption (samples/)"
run "$samples/raid6-compressed-encrypted.sh" demo 256M /tmp/demo.key "${ssds[@]:0:4}"
for bdf in "${ssds[@]:0:4}"; do printf '%s now: %s\n' "$bdf" "$(ssd_driver "$bdf")"; done
# configfs explains a refusal in the kernel log, with the errno it returns.
echo 1 >/sys/kernel/config/dpublk/volumes/demo/zero_detect 2>/dev/null ||
	echo "refused as it should: $(dmesg | tail -1 | sed 's/^.*\] //')"
dev=/dev/$(cat /sys/kernel/config/dpublk/volumes/demo/device)

step "real I/O on $dev: fio randwrite with 50% duplicate, 50% compressible data, then crc32c verify"
fio --name=demo --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=16k \
	--iodepth=32 --size=128M --dedupe_percentage=50 --buffer_compress_percentage=50 \
	--refill_buffers --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
	--output-format=json --output=/tmp/demo-fio.json 2>/tmp/demo-fio.err &&
	jq -r "$fio_summary" /tmp/demo-fio.json || { echo "fio failed:"; cat /tmp/demo-fio.err; }
stats=/sys/kernel/config/dpublk/volumes/demo/stats
awk '/^(state|logical_bytes|physical_bytes|dedup_saved_bytes|compression_saved_bytes|write_commands|read_commands) / { print "  " $0 }' "$stats"
awk '/^logical_bytes / { l = $2 } /^physical_bytes / { p = $2 } END { if (p > 0) printf "  reduction %.2f : 1 (logical / physical)\n", l / p }' "$stats"
grep -E '^ *[0-9]+:' /proc/interrupts | grep -i dpublk | awk '{ n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print "  MSI-X vector", $(NF-1) ": " n " interrupts" }'

step "no plaintext on the SSDs: a marker written to $dev is not on the raw media (AES-XTS on the accelerator)"
yes 'dpublk demo plaintext marker' | head -c 65536 >/tmp/marker
dd if=/tmp/marker of="$dev" bs=64k seek=100 oflag=direct conv=fsync status=none
dd if="$dev" bs=64k skip=100 count=1 iflag=direct status=none | cmp -s - /tmp/marker && echo "  marker reads back from $dev"
marker_hex=$(printf 'dpublk demo plaintext marker' | od -An -v -tx1 | tr -d ' \n')
host_request image-count "$marker_hex" ssd0 ssd1 ssd2 ssd3 2>/dev/null | sed 's/^/  occurrences in the raw image of /'

step "snapshot and clone (samples/snapshot-clone.sh)"
run "$samples/snapshot-clone.sh" demo before demo-copy
copy=/dev/$(cat /sys/kernel/config/dpublk/volumes/demo-copy/device)
dd if=/dev/zero of="$dev" bs=64k seek=100 count=1 oflag=direct conv=fsync status=none
dd if="$copy" bs=64k skip=100 count=1 iflag=direct status=none | cmp -s - /tmp/marker &&
	echo "  the clone still holds the marker after the origin was overwritten"

step "the driver's log"
dmesg | grep -E 'dpublk: (ssds|volumes)' | sed 's/^.*\] /  /' | tail -14

step "teardown (samples/teardown.sh): volumes deleted, SSDs back under nvme"
run "$samples/teardown.sh" demo-copy demo
sleep 1
for bdf in "${ssds[@]:0:4}"; do printf '%s now: %s %s\n' "$bdf" "$(ssd_driver "$bdf")" "$(ssd_blockdev "$bdf" 2>/dev/null)"; done
run rmmod dpublk
if [ -e /sys/kernel/config/dpublk ]; then echo "configfs root still present (unexpected)"; else echo "configfs root gone"; fi
