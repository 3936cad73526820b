#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dpublk-timeout: 1800
# A hostile accelerator corrupts the data it sends the host: dpuemu's
# hostile mode (test-hook register bit 1) puts a value the interface does
# not allow into one admin payload in 12 (vendor-payload: SSD, volume and
# snapshot lists, Statistics, Service Get, the Maintenance log; identify:
# Identify Controller, Namespace, the active namespace list). The driver
# must refuse every one of them: no corrupted value is ever shown.
#
# 1. With a raid6 volume, configfs attributes that each send one vendor
#    command with a payload are read HOSTILE_READS times (default 600):
#    every read either fails with EIO or shows sane content, and the
#    number of EIOs equals the number of vendor payloads dpuemu's log says
#    it corrupted.
# 2. The accelerator is unbound and bound HOSTILE_BINDS times (default
#    24): every probe either brings the volume's disk back with its size
#    and data, or ends with the driver refusing an Identify payload
#    (queue entry sizes, the namespace list, or the namespace's format);
#    the number of such probes equals the Identify payloads dpuemu
#    corrupted. Needs 4 SSDs and dpuemu.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"
. "$(dirname "$0")/protection_common.sh"

[ -z "${DPUBLK_TEST_BIND:-}" ] || skip "needs dpuemu"
log=${DPUBLK_RUNDIR:+$DPUBLK_RUNDIR/dpuemu.log}
[ -n "$log" ] && [ -r "$log" ] || skip "no dpuemu log (not run by scripts/vm.sh)"
reads=${HOSTILE_READS:-600}
binds=${HOSTILE_BINDS:-24}
HOOK_REGISTER=$((0x94))

unload_dpublk
dmesg_mark
protection_setup 4
pci=$(accelerator_pci) || fail "no accelerator function"
config=/sys/bus/pci/devices/$pci/config
[ "$(od -An -tx1 -j $((0x90)) -N1 "$config" | tr -d ' ')" = 09 ] ||
	fail "dpuemu without test hooks (no vendor capability at 0x90)"
set_hostile() { # set_hostile 0|1
	printf "\\x0$(($1 * 2))" | dd of="$config" bs=1 seek=$HOOK_REGISTER count=1 conv=notrunc status=none ||
		fail "cannot write the test-hook register"
}
on_exit "set_hostile 0"
injected() { # injected KIND FROM-LINE: anomalies of KIND in dpuemu's log since FROM-LINE
	tail -n +"$(($2 + 1))" "$log" | grep -c "hostile: injected $1 " || true
}

name=hp
dev=$(make_volume "$name" s0,s1,s2,s3 raid6 64M)
reference_write "$dev" 0 8
size=$(blockdev --getsize64 "$dev")
v=$DPUBLK_CFS/volumes/$name

# --- 1. vendor payloads ---
start_line=$(wc -l <"$log")
set_hostile 1
refused=0 shown=0
for i in $(seq 1 "$reads"); do
	case $((i % 5)) in
	0) attr=$DPUBLK_CFS/volume_list ;;
	1) attr=$v/stats ;;
	2) attr=$v/scrub ;;
	3) attr=$v/replace ;;
	4) attr=$v/snapshot_list ;;
	esac
	if out=$(cat "$attr" 2>"$TEST_TMP/err"); then
		shown=$((shown + 1))
		case $((i % 5)) in
		0) grep -q "^$name [0-9]* $size " <<<"$out" || fail "volume_list shows '$out'" ;;
		1) grep -qxE 'state (optimal|degraded|rebuilding|failed)' <<<"$out" &&
			awk '$1 == "rebuild_percent" { exit !($2 <= 100) }' <<<"$out" || fail "stats show '$(head -2 <<<"$out")'" ;;
		2 | 3) awk '$1 == "state" { s = $2 } $1 == "progress" { p = $2 } $1 == "rows" { r = ($2 <= $3) }
			END { exit !(s ~ /^(none|running|done|failed|cancelled)$/ && p <= 100 && r) }' <<<"$out" ||
			fail "$(basename "$attr") shows '$(tr '\n' ' ' <<<"$out")'" ;;
		4) [ -z "$out" ] || fail "snapshot_list shows '$out' for a volume without snapshots" ;;
		esac
	else
		grep -q 'Input/output error' "$TEST_TMP/err" || fail "reading $attr failed otherwise: $(cat "$TEST_TMP/err")"
		refused=$((refused + 1))
	fi
done
set_hostile 0
corrupted=$(injected vendor-payload "$start_line")
diag "vendor payloads: $reads reads, $corrupted corrupted by dpuemu, $refused refused with EIO, $shown shown (all sane)"
[ "$corrupted" -gt 0 ] || fail "dpuemu corrupted no vendor payload"
[ "$refused" = "$corrupted" ] || fail "$corrupted payloads corrupted but $refused reads refused"
dmesg_since_mark | grep -q 'device payload refused' || fail "no 'device payload refused' line in the kernel log"

# --- 2. Identify payloads at probe ---
start_line=$(wc -l <"$log")
dmesg_mark
set_hostile 1
failed_probes=0
for i in $(seq 1 "$binds"); do
	before=$(dmesg | wc -l)
	timeout 60 sh -c "echo $pci >/sys/bus/pci/drivers/dpublk/unbind" 2>/dev/null
	echo "$pci" >/sys/bus/pci/drivers/dpublk/bind 2>/dev/null
	new=$(dmesg | tail -n +"$((before + 1))")
	if grep -qE 'unsupported queue entry sizes|cannot list namespaces|namespace [0-9]+: no disk' <<<"$new"; then
		failed_probes=$((failed_probes + 1))
		[ ! -b "$dev" ] || fail "probe $i refused an Identify payload and still made $dev"
		continue
	fi
	for j in $(seq 1 100); do
		[ -b "$dev" ] && break
		sleep 0.1
	done
	[ -b "$dev" ] || { sed 's/^/#   /' <<<"$new" | tail -8; fail "probe $i: no $dev and no refusal logged"; }
	[ "$(blockdev --getsize64 "$dev")" = "$size" ] || fail "probe $i: $dev has another size"
done
set_hostile 0
corrupted=$(injected identify "$start_line")
diag "identify payloads: $binds probes, $corrupted Identify payloads corrupted, $failed_probes probes refused one"
[ "$failed_probes" = "$corrupted" ] || fail "$corrupted Identify payloads corrupted but $failed_probes probes refused one"
# Bound cleanly again: the data is there.
if [ ! -b "$dev" ]; then
	timeout 60 sh -c "echo $pci >/sys/bus/pci/drivers/dpublk/unbind" 2>/dev/null
	echo "$pci" >/sys/bus/pci/drivers/dpublk/bind || fail "cannot bind the accelerator again"
	for j in $(seq 1 100); do [ -b "$dev" ] && break; sleep 0.1; done
fi
[ -b "$dev" ] || fail "$dev did not come back with hostile mode off"
check_reference "$dev" 0 8
[ "$REF_FAILED" = 0 ] || fail "$REF_FAILED reads of the reference data fail"
remove_volume "$name"
dmesg_check_clean
exit $KSFT_PASS
