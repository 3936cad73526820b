#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dpuemu's functions are on the guest's PCI bus: the accelerator with its
# own class code (never bound by nvme), the local SSDs as NVMe controllers
# that the stock nvme driver binds at boot.
. "$(dirname "$0")/test_common.sh"

accel=$(lspci -Dn -d 1af4:10f0 | awk '{print $1}')
[ -n "$accel" ] || skip "no accelerator function (VM started without --accelerator)"
class=$(cat "/sys/bus/pci/devices/$accel/class")
[ "$class" = 0x018000 ] || fail "accelerator $accel has class $class, expected 0x018000"
driver=$(basename "$(readlink "/sys/bus/pci/devices/$accel/driver" 2>/dev/null)" 2>/dev/null)
[ "$driver" != nvme ] || fail "the stock nvme driver bound the accelerator $accel"

ssds=$(lspci -Dn -d 1af4:10f1 | awk '{print $1}')
[ -n "$ssds" ] || fail "no local SSD functions found"
count=0
for fn in $ssds; do
	class=$(cat "/sys/bus/pci/devices/$fn/class")
	[ "$class" = 0x010802 ] || fail "SSD function $fn has class $class, expected 0x010802"
	driver=$(basename "$(readlink "/sys/bus/pci/devices/$fn/driver")")
	[ "$driver" = nvme ] || fail "SSD function $fn is bound to '$driver', expected nvme"
	count=$((count + 1))
done
devs=$(dpublk_ssd_devices | wc -l)
[ "$devs" = "$count" ] || fail "$count SSD functions but $devs namespaces: $(dpublk_ssd_devices | tr '\n' ' ')"
diag "accelerator at $accel, $count SSD functions bound to nvme: $(dpublk_ssd_devices | tr '\n' ' ')"
exit $KSFT_PASS
