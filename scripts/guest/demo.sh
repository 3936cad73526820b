#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The demo, inside the VM: what `make run` shows. Every step prints the
# command it runs and what came of it.
set -u
step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
. "$DPUBLK_TOP/selftests/dpublk/test_common.sh" >/dev/null 2>&1 || true

step "kernel, and dpuemu's PCI functions (1af4:10f0 accelerator, 1af4:10f1 local SSD)"
uname -r
run lspci -nn -d 1af4:10f0; lspci -nn -d 1af4:10f1
[ -n "$(lspci -n -d 1af4:10f0; lspci -n -d 1af4:10f1)" ] || echo "(no dpuemu functions attached)"

step "local SSDs, bound by the stock nvme driver like real drives"
for dev in $(dpublk_ssd_devices); do
	printf '%s: %s bytes, model %s\n' "$dev" "$(blockdev --getsize64 "$dev")" \
		"$(cat "/sys/block/$(basename "$dev")/device/model" 2>/dev/null | xargs)"
done

ssd=$(dpublk_ssd_devices | head -1)
if [ -n "$ssd" ]; then
	step "real I/O on $ssd through dpuemu: fio randwrite + crc32c verify"
	fio --name=demo --filename="$ssd" --ioengine=io_uring --direct=1 --rw=randwrite \
		--bs=4k --iodepth=32 --size=32M --verify=crc32c --verify_fatal=1 \
		--output-format=json >/tmp/demo-fio.json 2>/tmp/demo-fio.err &&
		jq -r '.jobs[0] | "wrote \(.write.io_bytes / 1048576) MiB at \(.write.iops | floor) IOPS, verified \(.read.io_bytes / 1048576) MiB, errors: \(.error)"' /tmp/demo-fio.json ||
		{ echo "fio failed:"; cat /tmp/demo-fio.err; }
fi

step "load dpublk"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
run insmod "$DPUBLK_MODULE"
# The driver's own lines (its KUnit self-tests also report here, as KTAP).
dmesg | grep -E 'dpublk' | grep -vE 'Subtest|# |^\[[ 0-9.]+\] *(not )?ok [0-9]' | tail -12
dmesg | grep -E 'KTAP|# dpublk_.*pass:' | sed 's/^/kunit: /' | tail -6

step "configfs root"
run ls -l /sys/kernel/config/dpublk/
printf 'version:  %s\n' "$(cat /sys/kernel/config/dpublk/version)"
printf 'features: %s\n' "$(tr '\n' ' ' </sys/kernel/config/dpublk/features)"
ls /dev/dpublk* 2>/dev/null && echo "(dpublk block devices above)"

step "unload"
run rmmod dpublk
if [ -e /sys/kernel/config/dpublk ]; then echo "configfs root still present (unexpected)"; else echo "configfs root gone"; fi
