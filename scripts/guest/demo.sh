#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The demo, inside the VM: what `make run` shows.
set -u
step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "kernel and PCI functions"
uname -r
lspci -nn 2>/dev/null | grep -iE '1df5|non-volatile|mass storage' || echo "(no accelerator or SSD functions attached)"

step "load dpublk"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
run insmod "$DPUBLK_MODULE"
dmesg | grep -E 'dpublk' | tail -5

step "configfs root"
run ls -l /sys/kernel/config/dpublk/
printf 'version:  %s\n' "$(cat /sys/kernel/config/dpublk/version)"
printf 'features: %s\n' "$(tr '\n' ' ' </sys/kernel/config/dpublk/features)"

step "unload"
run rmmod dpublk
[ -e /sys/kernel/config/dpublk ] && echo "configfs root still present (unexpected)" || echo "configfs root gone"
