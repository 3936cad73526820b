#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The demo, inside the VM: what `make run` shows. Every step prints the
# command it runs and what came of it.
set -u
step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
. "$DPUBLK_TOP/selftests/dpublk/test_common.sh" >/dev/null 2>&1 || true
cd /tmp || exit 1 # the repository is read-only in the guest; fio keeps state files

step "kernel, and dpuemu's PCI functions (1af4:10f0 accelerator, 1af4:10f1 local SSD)"
uname -r
run lspci -nn -d 1af4:10f0; lspci -nn -d 1af4:10f1
[ -n "$(lspci -n -d 1af4:10f0; lspci -n -d 1af4:10f1)" ] || echo "(no dpuemu functions attached)"

step "local SSDs, bound by the stock nvme driver like real drives (except the one the accelerator owns)"
for dev in $(dpublk_ssd_devices); do
	printf '%s: %s bytes, model %s\n' "$dev" "$(blockdev --getsize64 "$dev")" \
		"$(cat "/sys/block/$(basename "$dev")/device/model" 2>/dev/null | xargs)"
done

ssd=$(dpublk_ssd_devices | head -1)
if [ -n "$ssd" ]; then
	step "real I/O on $ssd through dpuemu: fio randwrite + crc32c verify"
	fio --name=demo --filename="$ssd" --ioengine=io_uring --direct=1 --rw=randwrite \
		--bs=4k --iodepth=32 --size=32M --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
		--output-format=json --output=/tmp/demo-fio.json 2>/tmp/demo-fio.err &&
		jq -r '.jobs[0] | "wrote \(.write.io_bytes / 1048576) MiB at \(.write.iops | floor) IOPS, verified \(.read.io_bytes / 1048576) MiB, errors: \(.error)"' /tmp/demo-fio.json ||
		{ echo "fio failed:"; cat /tmp/demo-fio.err; }
fi

step "load dpublk"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
run insmod "$DPUBLK_MODULE"
# The driver's own lines (its KUnit self-tests also report here, as KTAP).
dmesg | grep -E '\] dpublk( |:)' | tail -8
dmesg | grep -E 'KTAP|# dpublk_.*pass:' | sed 's/^/kunit: /' | tail -6

udevadm settle 2>/dev/null || true
for _ in $(seq 1 20); do [ -b /dev/dpublk0 ] && break; sleep 0.5; done
if [ -b /dev/dpublk0 ]; then
	step "/dev/dpublk0: the accelerator's namespace through dpublk's own queues"
	printf '/dev/dpublk0: %s bytes, %s hardware queues, max I/O %s KiB\n' "$(blockdev --getsize64 /dev/dpublk0)" \
		"$(ls /sys/block/dpublk0/mq | wc -l)" "$(cat /sys/block/dpublk0/queue/max_sectors_kb)"
	fio --name=dpublk --filename=/dev/dpublk0 --ioengine=io_uring --direct=1 --rw=randwrite \
		--bs=4k --iodepth=32 --size=64M \
		--verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=json --output=/tmp/demo-dpublk.json 2>/tmp/demo-dpublk.err &&
		jq -r '.jobs[0] | "wrote \(.write.io_bytes / 1048576) MiB at \(.write.iops | floor) IOPS, verified \(.read.io_bytes / 1048576) MiB, errors: \(.error)"' /tmp/demo-dpublk.json ||
		{ echo "fio failed:"; cat /tmp/demo-dpublk.err; }
	grep -E '^ *[0-9]+:' /proc/interrupts | grep -i dpublk | awk '{ n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print "MSI-X vector", $(NF-1) ": " n " interrupts" }'
else
	echo "(no /dev/dpublk0: start dpuemu with --passthrough-ssd N to get a namespace)"
fi

step "configfs root"
run ls -l /sys/kernel/config/dpublk/
printf 'version:  %s\n' "$(cat /sys/kernel/config/dpublk/version)"
printf 'features: %s\n' "$(tr '\n' ' ' </sys/kernel/config/dpublk/features)"
ls /dev/dpublk* 2>/dev/null && echo "(dpublk block devices above)"

step "unload"
udevadm settle 2>/dev/null || true
run rmmod dpublk
if [ -e /sys/kernel/config/dpublk ]; then echo "configfs root still present (unexpected)"; else echo "configfs root gone"; fi
