#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The accelerator's NVMe/TCP target configured from the host through
# dpublk's configfs (nvmf/ports, nvmf/subsystems, namespaces over a
# volume), reached by Linux's own initiator (nvme-cli, nvme-tcp): discovery
# lists only what the host may reach, fio verify on the namespace, the data
# is the volume's (read back through a dpublk disk of the same volume), a
# host not on the allowed list is refused until it is added (live),
# bad input fails with the documented errno, logs one line and changes
# nothing, rmdir of enabled objects and rmmod are refused, and teardown
# under a connected host ends its association.
#
# The target runs in the host-side dpuemu (the accelerator behind QEMU), so
# the guest reaches it through QEMU's user network: the port listens on the
# host's 127.0.0.1, which the guest sees as 10.0.2.2 (scripts/vm.sh --net).
# dpublk-timeout: 600
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"
. "$(dirname "$0")/nvmf_host_common.sh"

accelerator_pci >/dev/null || skip "no accelerator function (run with --accelerator)"
command -v nvme >/dev/null || fail "nvme-cli is not installed in the VM"
# virtme-ng configures the user network by DHCP; if that did not happen,
# slirp's fixed addresses work as well.
if ! ip -4 addr show 2>/dev/null | grep -q 'inet 10\.0\.2\.' && [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 2>/dev/null
fi
ip -4 addr show 2>/dev/null | grep -q 'inet 10\.0\.2\.' ||
	skip "no QEMU user network to the host (run scripts/vm.sh with --net)"
modprobe nvme-tcp || fail "cannot load nvme-tcp"

HOST=10.0.2.2
NVMF_ADDRESS=$HOST
NQN=nqn.2026-12.org.dpublk:configfs-selftest
HIDDEN=nqn.2026-12.org.dpublk:configfs-hidden
HOSTID=6c0b1f3e-5a43-4d2e-9d67-0000000000c1
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$HOSTID
STRANGER_ID=6c0b1f3e-5a43-4d2e-9d67-0000000000c2
STRANGER=nqn.2014-08.org.nvmexpress:uuid:$STRANGER_ID

unload_dpublk
dmesg_mark
load_dpublk_management
N=$DPUBLK_CFS/nvmf
P=$N/ports
SS=$N/subsystems
SUB=$SS/$NQN
[ -d "$P" ] && [ -d "$SS" ] || fail "no nvmf/ports and nvmf/subsystems in configfs"
grep -qx nvmf "$DPUBLK_CFS/features" || fail "features does not list nvmf"

# nvmf_teardown: best effort, for the exit hooks (runs before cleanup_tree).
nvmf_teardown() {
	local d
	nvme disconnect -n "$NQN" >/dev/null 2>&1
	for d in "$SS"/*/namespaces/*/; do
		[ -d "$d" ] || continue
		echo 0 >"$d/enable" 2>/dev/null
		rmdir "$d" 2>/dev/null
	done
	for d in "$SS"/*/; do
		[ -d "$d" ] || continue
		echo 0 >"$d/enable" 2>/dev/null
		rmdir "$d" 2>/dev/null
	done
	for d in "$P"/*/; do
		[ -d "$d" ] || continue
		echo 0 >"$d/enable" 2>/dev/null
		rmdir "$d" 2>/dev/null
	done
	return 0
}
on_exit nvmf_teardown

# A volume to export: linear on SSD 0, no dpublk disk while exported.
attach_ssd s0 0
make_volume tcpvol s0 linear 256M >/dev/null
cfs_write_busy "$DPUBLK_CFS/volumes/tcpvol/enable" 0

# 1. Port 1 on the host's loopback. The host may run other VMs: try a few
#    random services until one binds.
mkdir "$P/1" || fail "mkdir nvmf/ports/1"
[ "$(cat "$P/1/addr_trtype")" = tcp ] || fail "addr_trtype is not tcp by default"
[ "$(cat "$P/1/addr_trsvcid")" = 4420 ] || fail "addr_trsvcid is not 4420 by default"
cfs_write "$P/1/addr_trtype" tcp
cfs_write "$P/1/addr_adrfam" ipv4
cfs_write "$P/1/addr_traddr" 127.0.0.1
PORT=
for try in 1 2 3 4 5 6 7 8; do
	svc=$((20000 + RANDOM % 30000))
	cfs_write "$P/1/addr_trsvcid" "$svc"
	if echo 1 >"$P/1/enable" 2>"$TEST_TMP/enable.err"; then
		PORT=$svc
		break
	fi
	grep -q "Address already in use" "$TEST_TMP/enable.err" || fail "port enable: $(cat "$TEST_TMP/enable.err")"
done
[ -n "$PORT" ] || fail "no free TCP port found on the host in 8 tries"
[ "$(cat "$P/1/enable")" = 1 ] || fail "ports/1/enable does not read 1"
diag "port 1 listens on the host's 127.0.0.1:$PORT"

# 2. The subsystem: our host allowed, served on port 1, namespace 1 = tcpvol.
mkdir "$SUB" || fail "mkdir subsystems/$NQN"
[ "$(cat "$SUB/attr_allow_any_host")" = 0 ] || fail "attr_allow_any_host is not 0 by default"
[ "$(cat "$SUB/ports")" = none ] || fail "ports is not 'none' by default"
cfs_write "$SUB/allowed_hosts" "add $HOSTNQN"
cfs_write "$SUB/ports" 1
cfs_write "$SUB/enable" 1
[ "$(cat "$SUB/allowed_hosts")" = "$HOSTNQN" ] || fail "allowed_hosts reads '$(cat "$SUB/allowed_hosts")'"
mkdir "$SUB/namespaces/1" || fail "mkdir namespaces/1"
cfs_write "$SUB/namespaces/1/volume" tcpvol
cfs_write "$SUB/namespaces/1/enable" 1
# A second subsystem for another host only: discovery must hide it.
mkdir "$SS/$HIDDEN" || fail "mkdir subsystems/$HIDDEN"
cfs_write "$SS/$HIDDEN/allowed_hosts" "add $STRANGER"
cfs_write "$SS/$HIDDEN/ports" 1
cfs_write "$SS/$HIDDEN/enable" 1

# 3. Discovery through the port.
disc=$(nvme discover -t tcp -a "$HOST" -s "$PORT" --hostnqn="$HOSTNQN" --hostid="$HOSTID" 2>&1) ||
	{ echo "$disc" | sed 's/^/#   /'; fail "nvme discover failed"; }
echo "$disc" | grep -Eq "subnqn: +$NQN\$" || { echo "$disc" | sed 's/^/#   /'; fail "discovery does not list $NQN"; }
echo "$disc" | grep -q "$HIDDEN" && fail "discovery lists $HIDDEN to a host not allowed on it"
echo "$disc" | grep -Eq "trsvcid: +$PORT\$" || fail "discovery entry without service $PORT"
diag "discovery: $NQN listed, $HIDDEN hidden"

# 4. Connect, verify, and find the data in the volume.
nvmf_connect "$HOSTNQN" "$HOSTID" >/dev/null || fail "nvme connect failed"
dev=$(nvmf_wait_dev)
[ -n "$dev" ] || fail "no block device for $NQN after nvme connect"
size=$(blockdev --getsize64 "$dev")
[ "$size" = $((256 << 20)) ] || fail "$dev has $size bytes, the volume 256 MiB"
[ "$(blockdev --getss "$dev")" = 4096 ] || fail "$dev does not have the volume's 4 KiB blocks"
fio_verify "$dev" --bs=4k --iodepth=16 --size=16M --offset=0
fio_verify "$dev" --bs=128k --iodepth=8 --size=32M --offset=16M
head -c 1M /dev/urandom >"$TEST_TMP/pattern"
dd if="$TEST_TMP/pattern" of="$dev" bs=64k seek=$((200 << 4)) oflag=direct conv=fsync status=none ||
	fail "dd to $dev"
nvmf_disconnect
diag "$dev verified; a 1 MiB pattern written at 200 MiB"

# 5. A host not on the list is refused; added (live), it connects.
if nvmf_connect "$STRANGER" "$STRANGER_ID" >"$TEST_TMP/stranger.out" 2>&1; then
	fail "nvme connect as $STRANGER succeeded"
fi
for c in /sys/class/nvme/nvme*; do
	[ -e "$c/hostnqn" ] || continue
	[ "$(cat "$c/hostnqn")" = "$STRANGER" ] && fail "a controller exists for $STRANGER"
done
[ -z "$(nvmf_namespace_dev)" ] || fail "a block device appeared for the refused host"
cfs_write "$SUB/allowed_hosts" "add $STRANGER"
nvmf_connect "$STRANGER" "$STRANGER_ID" >/dev/null || fail "$STRANGER refused after it was added"
[ -n "$(nvmf_wait_dev)" ] || fail "no block device for $STRANGER once allowed"
nvmf_disconnect
cfs_write "$SUB/allowed_hosts" "remove $STRANGER"
if nvmf_connect "$STRANGER" "$STRANGER_ID" >/dev/null 2>&1; then
	fail "$STRANGER connected after it was removed"
fi
diag "$STRANGER refused, allowed once added, refused again once removed"

# 6. Bad input: errno, one log line naming object and attribute, nothing
#    changed (every attribute of the object, the tree, the target serving).
declare -A MSG=(
	[EINVAL]="Invalid argument" [EBUSY]="Device or resource busy" [ENOENT]="No such file or directory"
	[EEXIST]="File exists" [EADDRINUSE]="Address already in use" [ENOSPC]="No space left on device"
)
snapshot() { # snapshot DIR: every attribute of DIR, and the tree below nvmf/
	local f
	for f in "$1"/*; do [ -f "$f" ] && echo "$(basename "$f")=$(cat "$f" 2>/dev/null | tr '\n' ' ')"; done
	find "$N" -mindepth 1 | sort
}
cases=0
expect() { # expect ERRNO DIR LOGTEXT COMMAND...: refused, logged, nothing changed
	local errno=$1 dir=$2 logtext=$3 before after mark
	shift 3
	cases=$((cases + 1))
	before=$(snapshot "$dir")
	mark="nvmf-case-$cases-$RANDOM"
	echo "$mark" >/dev/kmsg
	if "$@" 2>"$TEST_TMP/case.err"; then
		fail "case $cases ($*) succeeded"
	fi
	grep -q "${MSG[$errno]}" "$TEST_TMP/case.err" ||
		fail "case $cases ($*): expected $errno, got: $(cat "$TEST_TMP/case.err")"
	after=$(snapshot "$dir")
	[ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after") | sed 's/^/#   /'; fail "case $cases ($*) changed something"; }
	if [ -n "$logtext" ]; then
		dmesg | sed -n "/$mark/,\$p" | grep -F "$logtext" | grep -q "($errno)" ||
			fail "case $cases ($*): no log line '$logtext ... ($errno)'"
	fi
}
w() { echo "$2" >"$1"; } # w PATH VALUE: a raw write for expect
mkdir "$P/2" || fail "mkdir ports/2"
expect EINVAL "$P" "nvmf/ports: cannot create '0'" mkdir "$P/0"
expect EINVAL "$P" "nvmf/ports: cannot create '01'" mkdir "$P/01"
expect EINVAL "$P" "nvmf/ports: cannot create '65536'" mkdir "$P/65536"
expect EBUSY "$P/1" "nvmf/ports/1: addr_traddr:" w "$P/1/addr_traddr" 127.0.0.2
expect EBUSY "$P/1" "nvmf/ports/1: addr_trsvcid:" w "$P/1/addr_trsvcid" 4420
expect EBUSY "$P/1" "nvmf/ports/1: addr_adrfam:" w "$P/1/addr_adrfam" ipv6
for bad in localhost 1.2.3.256 01.2.3.4 1.2.3 fe80::1%lo '[::1]' ' 127.0.0.1' 1::2::3; do
	expect EINVAL "$P/2" "nvmf/ports/2: addr_traddr:" w "$P/2/addr_traddr" "$bad"
done
expect EINVAL "$P/2" "nvmf/ports/2: addr_trtype:" w "$P/2/addr_trtype" rdma
expect EINVAL "$P/2" "nvmf/ports/2: addr_adrfam:" w "$P/2/addr_adrfam" ipv5
for bad in 0 65536 010 -1 0x10 "4420 1"; do
	expect EINVAL "$P/2" "nvmf/ports/2: addr_trsvcid:" w "$P/2/addr_trsvcid" "$bad"
done
expect EINVAL "$P/2" "nvmf/ports/2: enable: write addr_traddr first" w "$P/2/enable" 1
expect EINVAL "$P/2" "nvmf/ports/2: enable:" w "$P/2/enable" 2
cfs_write "$P/2/addr_traddr" 127.0.0.1
cfs_write "$P/2/addr_adrfam" ipv6
expect EINVAL "$P/2" "nvmf/ports/2: enable: addr_adrfam does not match" w "$P/2/enable" 1
cfs_write "$P/2/addr_adrfam" ipv4
cfs_write "$P/2/addr_trsvcid" "$PORT"
expect EADDRINUSE "$P/2" "nvmf/ports/2: enable:" w "$P/2/enable" 1
expect EBUSY "$P" "" rmdir "$P/1"

expect EINVAL "$SS" "nvmf/subsystems: cannot create 'notanqn'" mkdir "$SS/notanqn"
expect EINVAL "$SS" "nvmf/subsystems: cannot create" mkdir "$SS/nqn.2014-08.org.nvmexpress.discovery"
expect EINVAL "$SUB" "nvmf/subsystems/$NQN: attr_allow_any_host:" w "$SUB/attr_allow_any_host" 1
expect EINVAL "$SUB" "nvmf/subsystems/$NQN: allowed_hosts:" w "$SUB/allowed_hosts" "add bogus"
expect EINVAL "$SUB" "nvmf/subsystems/$NQN: allowed_hosts:" w "$SUB/allowed_hosts" "$HOSTNQN"
expect EEXIST "$SUB" "nvmf/subsystems/$NQN: allowed_hosts:" w "$SUB/allowed_hosts" "add $HOSTNQN"
expect ENOENT "$SUB" "nvmf/subsystems/$NQN: allowed_hosts:" w "$SUB/allowed_hosts" "remove nqn.2026-12.org.dpublk:nobody"
expect EINVAL "$SUB" "nvmf/subsystems/$NQN: ports:" w "$SUB/ports" 1,1
expect EINVAL "$SUB" "nvmf/subsystems/$NQN: ports:" w "$SUB/ports" 0
expect ENOENT "$SUB" "nvmf/subsystems/$NQN: ports: no directory nvmf/ports/7" w "$SUB/ports" 1,7
expect EBUSY "$SUB" "nvmf/subsystems/$NQN: enable: disable its namespaces first" w "$SUB/enable" 0
expect EBUSY "$SS" "" rmdir "$SUB"

NS=$SUB/namespaces
expect EINVAL "$NS" "namespaces: cannot create '0'" mkdir "$NS/0"
expect EINVAL "$NS" "namespaces: cannot create '1025'" mkdir "$NS/1025"
expect EBUSY "$NS/1" "namespaces/1: volume:" w "$NS/1/volume" othervol
expect EBUSY "$NS" "" rmdir "$NS/1"
mkdir "$NS/2" || fail "mkdir namespaces/2"
expect EINVAL "$NS/2" "namespaces/2: enable: write the volume" w "$NS/2/enable" 1
expect EINVAL "$NS/2" "namespaces/2: volume:" w "$NS/2/volume" "bad name"
cfs_write "$NS/2/volume" nosuchvol
expect ENOENT "$NS/2" "namespaces/2: enable:" w "$NS/2/enable" 1
cfs_write "$NS/2/volume" tcpvol
expect EBUSY "$NS/2" "namespaces/2: enable: the volume is exported" w "$NS/2/enable" 1
mkdir "$SS/$HIDDEN/namespaces/1" || fail "mkdir $HIDDEN/namespaces/1"
cfs_write "$SS/$HIDDEN/namespaces/1/volume" tcpvol
cfs_write "$SS/$HIDDEN/enable" 0
expect EINVAL "$SS/$HIDDEN/namespaces/1" "namespaces/1: enable: enable the subsystem first" \
	w "$SS/$HIDDEN/namespaces/1/enable" 1
rmdir "$SS/$HIDDEN/namespaces/1" "$SS/$HIDDEN" "$NS/2" "$P/2" || fail "rmdir of disabled objects"
# rmmod while handles exist (and a host is connected).
nvmf_connect "$HOSTNQN" "$HOSTID" --ctrl-loss-tmo=3 --reconnect-delay=1 >/dev/null || fail "nvme connect failed"
dev=$(nvmf_wait_dev)
[ -n "$dev" ] || fail "no block device after the bad-input cases"
rmmod dpublk 2>/dev/null && fail "rmmod dpublk succeeded with nvmf handles"
cmp -s "$TEST_TMP/pattern" <(dd if="$dev" bs=64k skip=$((200 << 4)) count=16 iflag=direct status=none) ||
	fail "the pattern does not read back after the refused cases"
diag "$cases refused cases: errno, log line, nothing changed; the target still serves"

# 7. Teardown with the host connected: the namespace goes (its I/O fails),
#    the subsystem goes (the association ends), the port stops listening.
cfs_write "$NS/1/enable" 0
if dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null; then
	fail "a read through a disabled namespace succeeded"
fi
cfs_write "$SUB/enable" 0
cfs_write "$P/1/enable" 0
for i in $(seq 1 100); do
	[ -z "$(nvmf_namespace_dev)" ] && break
	sleep 0.1
done
nvme disconnect -n "$NQN" >/dev/null 2>&1
[ -z "$(nvmf_namespace_dev)" ] || fail "the host still has a block device after teardown"
if nvme discover -t tcp -a "$HOST" -s "$PORT" --hostnqn="$HOSTNQN" >/dev/null 2>&1; then
	fail "discovery still answers on a disabled port"
fi
rmdir "$NS/1" "$SUB" "$P/1" || fail "rmdir after teardown"
diag "teardown with a connected host: namespace, subsystem, port gone"

# 8. What went over TCP is the volume's: read it through a dpublk disk.
cfs_write "$DPUBLK_CFS/volumes/tcpvol/enable" 1
vdev=/dev/$(cat "$DPUBLK_CFS/volumes/tcpvol/device")
for i in $(seq 1 50); do [ -b "$vdev" ] && break; sleep 0.1; done
cmp -s "$TEST_TMP/pattern" <(dd if="$vdev" bs=64k skip=$((200 << 4)) count=16 iflag=direct status=none) ||
	fail "the volume's disk does not hold what the host wrote over TCP"
diag "$vdev holds the pattern written over TCP"
remove_volume tcpvol
detach_ssd s0
dmesg_check_clean
