#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A volume member on Linux's nvmet-tcp: dpuemu, in appliance mode, takes
# nvmet's namespace as a remote SSD ([remote-ssd]), makes a RAID10 volume
# over a local image and that remote SSD ([volume]) and exports it to
# Linux's nvme-tcp host. fio verify goes on while nvmet stops serving the
# subsystem (the member fails, the volume degrades and keeps serving) and
# serves it again (dpuemu reconnects, re-adds the member and rebuilds it);
# then the appliance restarts with a blank local image, so everything is
# read from nvmet's copy alone, and every seeded pass verifies.
# dpublk-timeout: 1200
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/nvmet_common.sh"

DPUEMU=${DPUBLK_DPUEMU:-$DPUBLK_TOP/target/release/dpuemu}
[ -x "$DPUEMU" ] || fail "dpuemu is not built: $DPUEMU"
command -v nvme >/dev/null || fail "nvme-cli is not installed in the VM"
modprobe nvme-tcp || fail "cannot load nvme-tcp"
ip link set lo up || fail "cannot bring up the loopback interface"
nvmet_setup

SHELF=nqn.2026-12.org.linux:nvmet-shelf
NQN=nqn.2026-12.org.dpublk:nvmf-mirror
HOSTID=6c0b1f3e-5a43-4d2e-9d67-0000000000d4
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$HOSTID
mkdir "$TEST_TMP/shelf"
mount -t tmpfs -o size=160M nvmf-shelf "$TEST_TMP/shelf" || fail "cannot mount a tmpfs"
on_exit 'umount "$TEST_TMP/shelf"'
truncate -s 128M "$TEST_TMP/shelf/remote.img"
nvmet_export "$SHELF" "$TEST_TMP/shelf/remote.img" 2 4421

LOCAL=$TEST_TMP/local.img
LOG=$TEST_TMP/dpuemu.log
cat >"$TEST_TMP/nvmf.conf" <<CONF
[remote-ssd shelf]
address 127.0.0.1:4421
subsystem $SHELF

[volume db0]
layout raid10
ssds 0 shelf
size 64M

[port 1]
address 127.0.0.1
service 4420

[subsystem $NQN]
ports 1
host $HOSTNQN
namespace 1 volume db0
CONF

target_pid=
dev=
start_appliance() {
	local before i
	before=$(grep -c 'listening on' "$LOG" 2>/dev/null || true)
	setsid "$DPUEMU" --socket-dir "$TEST_TMP/sockets" --ssd "$LOCAL:128M" \
		--nvmf-config "$TEST_TMP/nvmf.conf" >>"$LOG" 2>&1 </dev/null &
	target_pid=$!
	for i in $(seq 1 300); do
		[ "$(grep -c 'listening on' "$LOG")" -gt "${before:-0}" ] && return 0
		kill -0 "$target_pid" 2>/dev/null || break
		sleep 0.1
	done
	sed 's/^/#   /' "$LOG" | tail -20
	fail "dpuemu did not start"
}
stop_appliance() { # SIGTERM: dpuemu flushes the volume before it exits
	[ -n "$target_pid" ] || return 0
	kill "$target_pid" 2>/dev/null
	wait "$target_pid" 2>/dev/null
	target_pid=
}
namespace_dev() {
	local b
	for b in /sys/block/nvme*n1; do
		[ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$NQN" ] && { echo "/dev/$(basename "$b")"; return; }
	done
}
connect() { # sets dev (not in a subshell: fail must end the test)
	local i
	nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$NQN" --hostnqn="$HOSTNQN" --hostid="$HOSTID" >/dev/null ||
		fail "nvme connect to dpuemu failed"
	for i in $(seq 1 100); do
		dev=$(namespace_dev)
		[ -n "$dev" ] && [ -b "$dev" ] && return 0
		sleep 0.1
	done
	fail "no block device for $NQN"
}
disconnect() { nvme disconnect -n "$NQN" >/dev/null 2>&1; }
on_exit 'disconnect; kill -9 $target_pid 2>/dev/null; wait $target_pid 2>/dev/null'
# wait_log PATTERN SECONDS WHAT: waits for dpuemu to log PATTERN.
wait_log() {
	local i
	for i in $(seq 1 $(($2 * 10))); do
		grep -q "$1" "$LOG" && return 0
		sleep 0.1
	done
	sed 's/^/#   /' "$LOG" | tail -20
	fail "$3: dpuemu never logged '$1'"
}

dmesg_mark
start_appliance
grep -q 'remote SSD shelf (127.0.0.1:4421' "$LOG" || fail "nvmet's namespace is not SSD 1"
grep -q 'volume db0 made' "$LOG" || fail "the [volume] was not made"
connect
[ "$(blockdev --getsize64 "$dev")" = $((64 << 20)) ] || fail "$dev is not the 64 MiB volume"
[ "$(blockdev --getss "$dev")" = 4096 ] || fail "$dev does not have the volume's 4 KiB blocks"

# 1. Both members in service.
seeded before 0 16 1717 --do_verify=1
diag "16 MiB written and verified on the optimal mirror"

# 2. nvmet stops serving the shelf under a rate-limited fio verify job (so
#    its timeline does not depend on the machine's speed), then serves it
#    again: the member fails, the volume keeps serving, the member comes
#    back through a rebuild.
out=$TEST_TMP/outage.json
fio --name=outage --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
	--iodepth=4 --offset=16M --size=16M --rate_iops=200 --randseed=2929 --verify=crc32c \
	--verify_fatal=1 --do_verify=1 --verify_state_save=0 --output-format=json --output="$out" &
fio_pid=$!
sleep 3
kill -0 "$fio_pid" 2>/dev/null || fail "fio finished before the outage: nothing was in flight"
nvmet_unlink "$SHELF" 2
wait_log 'nvmf remote SSD shelf: .* lost' 60 "the outage"
diag "nvmet stopped serving the shelf; dpuemu saw the member go"
sleep 5
kill -0 "$fio_pid" 2>/dev/null || fail "fio ended during the outage (it should still be writing)"
nvmet_link "$SHELF" 2
wait_log 'nvmf remote SSD shelf: .* is back' 120 "the return"
wait_log 'SSD 1 re-added to its array, rebuilding' 30 "the re-add"
wait "$fio_pid" || { sed 's/^/#   /' "$out" | tail -20; fail "fio across the outage failed"; }
[ "$(jq '[.jobs[].error] | add' "$out")" = 0 ] || fail "fio reported an error across the outage"
wait_log 'accel: rebuild complete' 900 "the rebuild"
diag "the member was rebuilt; fio across the outage wrote and verified $(jq '[.jobs[].write.io_bytes] | add' "$out") bytes"
seeded after 32 16 3131 --do_verify=1

# 3. The appliance restarts with a blank local image: the family opens
#    from nvmet's copy alone (degraded), and everything verifies.
disconnect
stop_appliance
rm -f "$LOCAL"
start_appliance
grep -q 'volume db0 found on the SSDs' "$LOG" || fail "the volume was not found on the remote SSD"
[ "$(grep -c 'volume db0 made' "$LOG")" = 1 ] || fail "the volume was made again"
connect
seeded before 0 16 1717 --verify_only=1
seeded outage 16 16 2929 --verify_only=1
seeded after 32 16 3131 --verify_only=1
diag "48 MiB verified from nvmet's copy alone"

disconnect
kill -0 "$target_pid" 2>/dev/null || fail "dpuemu died"
grep -q 'panicked' "$LOG" && fail "dpuemu panicked"
dmesg_check_clean
exit $KSFT_PASS
