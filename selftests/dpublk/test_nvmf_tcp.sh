#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# dpuemu's NVMe/TCP target in appliance mode (--nvmf-config), reached by
# Linux's own initiator (nvme-cli and nvme-tcp) over the guest's loopback:
# discovery lists only what the host may reach, fio verify on the
# namespace (in-capsule and R2T writes), the data lands in the image,
# disconnect/reconnect keeps it, the target killed and restarted under fio
# loses nothing (the host reconnects and retries), a host NQN not on the
# allowed list is refused, and header plus data digests pass fio verify.
# The target runs inside the guest: see Documentation/nvme-tcp.rst for why.
# dpublk-timeout: 900
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/nvmf_host_common.sh"

DPUEMU=${DPUBLK_DPUEMU:-$DPUBLK_TOP/target/release/dpuemu}
[ -x "$DPUEMU" ] || fail "dpuemu is not built: $DPUEMU"
command -v nvme >/dev/null || fail "nvme-cli is not installed in the VM"
modprobe nvme-tcp || fail "cannot load nvme-tcp"
ip link set lo up || fail "cannot bring up the loopback interface"

PORT=4420
NQN=nqn.2026-12.org.dpublk:nvmf-selftest
HIDDEN=nqn.2026-12.org.dpublk:nvmf-hidden
HOSTID=6c0b1f3e-5a43-4d2e-9d67-0000000000a1
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$HOSTID
STRANGER_ID=6c0b1f3e-5a43-4d2e-9d67-0000000000b2
STRANGER=nqn.2014-08.org.nvmexpress:uuid:$STRANGER_ID
IMAGE=$TEST_TMP/ns1.img
LOG=$TEST_TMP/dpuemu.log
cat >"$TEST_TMP/nvmf.conf" <<CONF
[port 1]
address 127.0.0.1
service $PORT

[subsystem $NQN]
ports 1
host $HOSTNQN
namespace 1 file $IMAGE 192M

[subsystem $HIDDEN]
ports 1
host $STRANGER
namespace 1 file $TEST_TMP/hidden.img 16M
CONF

target_pid=
start_target() {
	local before i
	before=$(grep -c 'listening on' "$LOG" 2>/dev/null || true)
	setsid "$DPUEMU" --socket-dir "$TEST_TMP/sockets" --nvmf-config "$TEST_TMP/nvmf.conf" \
		>>"$LOG" 2>&1 </dev/null &
	target_pid=$!
	for i in $(seq 1 100); do
		[ "$(grep -c 'listening on' "$LOG")" -gt "${before:-0}" ] && return 0
		kill -0 "$target_pid" 2>/dev/null || break
		sleep 0.1
	done
	sed 's/^/#   /' "$LOG" | tail -20
	fail "the target did not start"
}
stop_target() {
	[ -n "$target_pid" ] || return 0
	kill -9 "$target_pid" 2>/dev/null
	wait "$target_pid" 2>/dev/null
	target_pid=
}
on_exit 'nvme disconnect -n "$NQN" >/dev/null 2>&1; stop_target'

dmesg_mark
start_target

# 1. Discovery: our subsystem is listed, the one for another host is not.
disc=$(nvme discover -t tcp -a 127.0.0.1 -s "$PORT" --hostnqn="$HOSTNQN" --hostid="$HOSTID" 2>&1) ||
	{ echo "$disc" | sed 's/^/#   /'; fail "nvme discover failed"; }
echo "$disc" | grep -Eq "subnqn: +$NQN\$" || { echo "$disc" | sed 's/^/#   /'; fail "discovery does not list $NQN"; }
echo "$disc" | grep -q "$HIDDEN" && fail "discovery lists $HIDDEN to a host not allowed on it"
echo "$disc" | grep -Eq "trsvcid: +$PORT\$" || fail "discovery entry without service $PORT"
echo "$disc" | grep -Eq "traddr: +127\.0\.0\.1\$" || fail "discovery entry without address 127.0.0.1"
diag "discovery: $NQN listed, $HIDDEN hidden"

# 2. Connect and verify.
nvmf_connect "$HOSTNQN" "$HOSTID" --reconnect-delay=1 --ctrl-loss-tmo=120 >/dev/null || fail "nvme connect failed"
dev=$(nvmf_wait_dev)
[ -n "$dev" ] || fail "no block device for $NQN after nvme connect"
size=$(blockdev --getsize64 "$dev")
[ "$size" = $((192 << 20)) ] || fail "$dev has $size bytes, the image 192 MiB"
# What Linux's initiator and nvme-cli read from the controller.
ctrl=/dev/$(basename "$(readlink -f "/sys/block/${dev#/dev/}/device")")
idc=$(nvme id-ctrl "$ctrl" -o json) || fail "nvme id-ctrl $ctrl failed"
[ "$(echo "$idc" | jq -r .subnqn)" = "$NQN" ] || fail "id-ctrl subnqn is not $NQN"
[ "$(echo "$idc" | jq -r .ioccsz)" = 516 ] || fail "id-ctrl IOCCSZ is not 516 (8 KiB in-capsule)"
[ "$(echo "$idc" | jq -r .mdts)" = 5 ] || fail "id-ctrl MDTS is not 5"
[ "$(echo "$idc" | jq -r .kas)" != 0 ] || fail "id-ctrl KAS is 0"
ana=$(nvme ana-log "$ctrl" 2>&1) || { echo "$ana" | sed 's/^/#   /'; fail "nvme ana-log $ctrl failed"; }
echo "$ana" | grep -qi optimized || { echo "$ana" | sed 's/^/#   /'; fail "the ANA log shows no optimized group"; }
diag "$ctrl: id-ctrl and ANA log as configured"
fio_verify "$dev" --bs=4k --iodepth=16 --size=16M --offset=0
fio_verify "$dev" --bs=128k --iodepth=8 --size=32M --offset=16M
# What the host wrote is in the target's image, byte for byte.
head -c 1M /dev/urandom >"$TEST_TMP/pattern"
dd if="$TEST_TMP/pattern" of="$dev" bs=64k seek=$((120 << 4)) oflag=direct conv=fsync status=none || fail "dd to $dev"
cmp -s "$TEST_TMP/pattern" <(dd if="$IMAGE" bs=64k skip=$((120 << 4)) count=16 status=none) ||
	fail "the image does not hold what was written through $dev"
diag "$dev verified; a 1 MiB pattern reached the image"

# 3. Disconnect and reconnect between writing and verifying.
fio_pass() { # fio_pass DEV OUTPUT extra fio args...: one seeded 16 MiB job
	local dev=$1 out=$2
	shift 2
	fio --name=pass --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=8k \
		--iodepth=16 --size=16M --offset=64M --verify=crc32c --verify_fatal=1 \
		--verify_state_save=0 --randseed=1717 --output-format=json --output="$out" "$@" ||
		{ sed 's/^/#   /' "$out" | tail -20; return 1; }
}
fio_pass "$dev" "$TEST_TMP/write.out" --do_verify=0 || fail "fio write pass failed"
nvmf_disconnect
nvmf_connect "$HOSTNQN" "$HOSTID" --reconnect-delay=1 --ctrl-loss-tmo=120 >/dev/null || fail "reconnect failed"
dev=$(nvmf_wait_dev)
[ -n "$dev" ] || fail "no block device after the reconnect"
fio_pass "$dev" "$TEST_TMP/verify.out" --verify_only=1 ||
	fail "data written before the disconnect did not verify after it"
verified=$(jq '[.jobs[].read.io_bytes] | add' "$TEST_TMP/verify.out")
[ "$verified" = $((16 << 20)) ] || fail "the verify pass read $verified bytes, not 16 MiB"
diag "16 MiB written, disconnected, reconnected, verified"

# 4. The target killed and restarted under fio: the host reconnects and
#    its I/O is retried; fio's verify passes.
out=$TEST_TMP/restart.json
fio --name=restart --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
	--iodepth=8 --size=48M --offset=96M --verify=crc32c --verify_fatal=1 --do_verify=1 \
	--verify_state_save=0 --output-format=json --output="$out" &
fio_pid=$!
sleep 2
kill -0 "$fio_pid" 2>/dev/null || fail "fio finished before the target restart: nothing was in flight"
stop_target
diag "target killed under fio"
sleep 2
start_target
wait "$fio_pid" || { cat "$out" | sed 's/^/#   /' | tail -20; fail "fio across the target restart failed"; }
[ "$(jq '[.jobs[].error] | add' "$out")" = 0 ] || fail "fio reported an error across the restart"
written=$(jq '[.jobs[].write.io_bytes] | add' "$out")
[ "$written" -gt 0 ] || fail "fio wrote nothing across the restart"
dmesg_since_mark | grep -q 'Successfully reconnected' || fail "the host never reconnected"
diag "target restarted under fio: $written bytes written and verified"
nvmf_disconnect

# 5. A host not on the allowed list is refused, and gets no controller.
if nvmf_connect "$STRANGER" "$STRANGER_ID" >"$TEST_TMP/stranger.out" 2>&1; then
	fail "nvme connect as $STRANGER succeeded"
fi
for c in /sys/class/nvme/nvme*; do
	[ -e "$c/hostnqn" ] || continue
	[ "$(cat "$c/hostnqn")" = "$STRANGER" ] && fail "a controller exists for $STRANGER"
done
grep -q "host $STRANGER is not allowed on $NQN" "$LOG" || fail "the target did not log the refusal"
[ -z "$(nvmf_namespace_dev)" ] || fail "a block device appeared for the refused host"
diag "host $STRANGER refused"

# 6. Header and data digests.
nvmf_connect "$HOSTNQN" "$HOSTID" --hdr-digest --data-digest >/dev/null || fail "nvme connect with digests failed"
dev=$(nvmf_wait_dev)
[ -n "$dev" ] || fail "no block device with digests on"
grep -q 'header digest true, data digest true' "$LOG" || fail "the target did not negotiate both digests"
fio_verify "$dev" --bs=4k --iodepth=16 --size=16M --offset=150M
fio_verify "$dev" --bs=128k --iodepth=8 --size=24M --offset=166M
nvmf_disconnect

kill -0 "$target_pid" 2>/dev/null || fail "the target died"
grep -q 'panicked' "$LOG" && fail "the target panicked"
dmesg_check_clean
diag "$(grep -c 'initialized' "$LOG") connections served"
exit $KSFT_PASS
