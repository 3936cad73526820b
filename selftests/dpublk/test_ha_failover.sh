#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Two dpuemu nodes over the same two SSD images (a raid10 volume), active
# and passive (--ha-config, Documentation/ha.rst), both serving the same
# NVMe/TCP subsystem; Linux's native NVMe multipath connects to both. fio
# randwrite with verify (O_SYNC: every acknowledged write is durable) runs
# while the active node is SIGKILLed HA_KILLS times (the other node takes
# over; the killed one is restarted and comes back passive); each time, a
# probe write outside fio's range measures how long I/O stalled. Then an
# orderly handover (SIGHUP) under fio: no error either. A ghost-write
# check: the active frozen with writes in flight, the passive takes over,
# new data goes over the same blocks, the old node is thawed: none of its
# stale writes lands. Fails on any fio
# error or verify mismatch, or a stall over HA_MAX_STALL seconds.
# Needs a kernel with CONFIG_NVME_MULTIPATH (skips otherwise).
# dpublk-timeout: 900
. "$(dirname "$0")/test_common.sh"

DPUEMU=${DPUBLK_DPUEMU:-$DPUBLK_TOP/target/release/dpuemu}
HA_KILLS=${HA_KILLS:-3}
HA_MAX_STALL=${HA_MAX_STALL:-15}
HA_FIO_MB=${HA_FIO_MB:-48}
[ -x "$DPUEMU" ] || fail "dpuemu is not built: $DPUEMU"
"$DPUEMU" --help | grep -q -- --ha-config || fail "$DPUEMU has no --ha-config"
command -v nvme >/dev/null || fail "nvme-cli is not installed in the VM"
command -v fio >/dev/null || fail "fio is not installed in the VM"
modprobe nvme-tcp || fail "cannot load nvme-tcp"
ip link set lo up || fail "cannot bring up the loopback interface"
mp=/sys/module/nvme_core/parameters/multipath
[ -e "$mp" ] || skip "kernel without CONFIG_NVME_MULTIPATH: no native multipath"
if [ "$(cat "$mp")" != Y ]; then
	# Reload the NVMe core with multipath on, if nothing uses it.
	ls /sys/class/nvme/ 2>/dev/null | grep -q . && skip "nvme_core.multipath=N and NVMe controllers in use"
	modprobe -r nvme-tcp nvme-fabrics nvme nvme-core 2>/dev/null
	modprobe nvme-core multipath=Y && modprobe nvme-tcp || fail "cannot reload nvme-core with multipath=Y"
	[ "$(cat "$mp")" = Y ] || skip "cannot turn native multipath on"
fi

NQN=nqn.2026-12.org.dpublk:ha-selftest
HOSTID=6c0b1f3e-5a43-4d2e-9d67-0000000000c3
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$HOSTID
declare -A SERVICE=([a]=4420 [b]=4421) HEARTBEAT=([a]=7800 [b]=7801) ROLE=([a]=active [b]=passive)
declare -A PID=()
other() { [ "$1" = a ] && echo b || echo a; }

for n in a b; do
	cat >"$TEST_TMP/$n.nvmf" <<CONF
[port 1]
address 127.0.0.1
service ${SERVICE[$n]}

[volume db0]
layout raid10
ssds 0 1
size 192M

[subsystem $NQN]
ports 1
host $HOSTNQN
namespace 1 volume db0
CONF
	cat >"$TEST_TMP/$n.ha" <<CONF
node dpu-$n
listen 127.0.0.1:${HEARTBEAT[$n]}
peer 127.0.0.1:${HEARTBEAT[$(other $n)]}
role ${ROLE[$n]}
interval 100
timeout 1000
fence-wait 2000
status $TEST_TMP/$n.status
CONF
done

state_of() { sed -n 's/^state //p' "$TEST_TMP/$1.status" 2>/dev/null; }
wait_state() { # wait_state NODE STATE SECONDS: a passive node also must have heard an active peer
	local i
	for i in $(seq 1 $(($3 * 10))); do
		if [ "$(state_of "$1")" = "$2" ]; then
			[ "$2" != passive ] || grep -q '^peer_state active$' "$TEST_TMP/$1.status" && return 0
		fi
		sleep 0.1
	done
	sed 's/^/#   /' "$TEST_TMP/$1.status" 2>/dev/null
	tail -20 "$TEST_TMP/$1.log" | sed 's/^/#   /'
	fail "node $1 is not $2 after $3 s (state: $(state_of "$1"))"
}
start_node() { # start_node NODE
	local n=$1
	setsid "$DPUEMU" --socket-dir "$TEST_TMP/sockets-$n" \
		--ssd "$TEST_TMP/ssd0.img:256M" --ssd "$TEST_TMP/ssd1.img:256M" \
		--nvmf-config "$TEST_TMP/$n.nvmf" --ha-config "$TEST_TMP/$n.ha" \
		>>"$TEST_TMP/$n.log" 2>&1 </dev/null &
	PID[$n]=$!
}
kill_node() {
	[ -n "${PID[$1]:-}" ] || return 0
	kill -9 "${PID[$1]}" 2>/dev/null
	wait "${PID[$1]}" 2>/dev/null
	PID[$1]=
}
head_dev() { # the multipath block device of our namespace
	local s d
	for s in /sys/class/nvme-subsystem/nvme-subsys*; do
		[ "$(cat "$s/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
		for d in "$s"/nvme*n1; do
			[ -e "$d" ] && { echo "/dev/$(basename "$d")"; return; }
		done
	done
}
ana_states() { # "SERVICE=STATE ..." of every path
	local p ctrl
	for p in /sys/block/nvme*c*n1; do
		[ -e "$p/ana_state" ] || continue
		ctrl=$(basename "$(readlink -f "$p/device")")
		echo "$(sed -n 's/.*trsvcid=\([0-9]*\).*/\1/p' "/sys/class/nvme/$ctrl/address")=$(cat "$p/ana_state")"
	done | sort | tr '\n' ' '
}
on_exit 'nvme disconnect -n "$NQN" >/dev/null 2>&1; kill_node a; kill_node b'

dmesg_mark
start_node a
wait_state a active 60
start_node b
wait_state b passive 30
for n in a b; do
	nvme connect -t tcp -a 127.0.0.1 -s "${SERVICE[$n]}" -n "$NQN" --hostnqn="$HOSTNQN" --hostid="$HOSTID" \
		--reconnect-delay=1 --ctrl-loss-tmo=-1 >/dev/null || fail "nvme connect to node $n failed"
done
dev=
for i in $(seq 1 100); do dev=$(head_dev); [ -n "$dev" ] && [ -b "$dev" ] && break; sleep 0.1; done
[ -n "$dev" ] || fail "no multipath block device for $NQN"
sleep 1
states=$(ana_states)
diag "paths: $states"
echo "$states" | grep -q "4420=optimized" || fail "node a's path is not optimized: $states"
echo "$states" | grep -q "4421=inaccessible" || fail "node b's path is not inaccessible: $states"
size=$(blockdev --getsize64 "$dev")
[ "$size" = $((192 << 20)) ] || fail "$dev has $size bytes, not 192 MiB"

# fio over [0, HA_FIO_MB) MiB; the probe writes at 160 MiB.
out=$TEST_TMP/fio.json
fio --name=ha --filename="$dev" --ioengine=libaio --direct=1 --sync=1 --rw=randwrite --bs=8k \
	--iodepth=8 --size=${HA_FIO_MB}M --offset=0 --verify=crc32c --verify_fatal=1 --do_verify=1 \
	--verify_state_save=0 --output-format=json --output="$out" &
fio_pid=$!
active=a
worst=0
for k in $(seq 1 "$HA_KILLS"); do
	sleep 3
	kill -0 "$fio_pid" 2>/dev/null || { diag "fio finished after $((k - 1)) kills"; break; }
	passive=$(other $active)
	wait_state "$passive" passive 30
	kill_node "$active"
	t0=$(date +%s%N)
	timeout 60 dd if=/dev/urandom of="$dev" bs=4k count=1 seek=$((160 << 8)) oflag=direct,sync status=none ||
		fail "kill $k: the probe write failed or hung after node $active was killed"
	stall=$((($(date +%s%N) - t0) / 1000000))
	wait_state "$passive" active 30
	reason=$(sed -n 's/^last_failover_reason //p' "$TEST_TMP/$passive.status")
	took=$(sed -n 's/^last_failover_took_ms //p' "$TEST_TMP/$passive.status")
	gen=$(sed -n 's/^fence_generation //p' "$TEST_TMP/$passive.status")
	diag "kill $k: node $active SIGKILLed; I/O resumed after $stall ms (node $passive: generation $gen, takeover $took ms, '$reason')"
	[ "$stall" -gt "$worst" ] && worst=$stall
	[ "$stall" -le $((HA_MAX_STALL * 1000)) ] || fail "kill $k: I/O stalled $stall ms (limit ${HA_MAX_STALL} s)"
	start_node "$active"
	wait_state "$active" passive 60
	active=$passive
done
wait "$fio_pid" || { sed 's/^/#   /' "$out" | tail -20; fail "fio across the failovers failed"; }
[ "$(jq '[.jobs[].error] | add' "$out")" = 0 ] || fail "fio reported an error across the failovers"
written=$(jq '[.jobs[].write.io_bytes] | add' "$out")
verified=$(jq '[.jobs[].read.io_bytes] | add' "$out")
[ "$verified" -gt 0 ] || fail "fio verified nothing"
diag "fio: $written bytes written and $verified verified across the kills; worst stall $worst ms"

# Ghost writes: the active is frozen (SIGSTOP) with writes of 0xaa in
# flight to [170, 174) MiB; the passive takes over, the host's keep-alive
# gives up on the frozen path and retries there, and 0x55 is then written
# over the same blocks through the new active. Thawed, the old node still
# holds the commands it had received: the fence must refuse every one of
# them, so the blocks read 0x55 at the end.
passive=$(other $active)
fio --name=ghost --filename="$dev" --ioengine=libaio --direct=1 --rw=write --bs=64k --iodepth=16 \
	--size=4M --offset=170M --buffer_pattern=0xaa --time_based --runtime=15 \
	--output="$TEST_TMP/ghost.out" &
ghost_pid=$!
sleep 2
kill -STOP "${PID[$active]}"
thawed=
for i in $(seq 1 200); do
	[ "$(state_of "$passive")" = active ] && break
	# The freeze caught a write between its fence check and its end: the
	# fence waits for it (Documentation/ha.rst, "A frozen old node"), so
	# thaw first; that one write is ordered before the fence.
	if grep -q '^last_error fence: .*still in progress' "$TEST_TMP/$passive.status"; then
		diag "ghost writes: the freeze caught a write inside its fence check; thawing first"
		kill -CONT "${PID[$active]}"
		thawed=1
		break
	fi
	sleep 0.1
done
wait_state "$passive" active 30
wait "$ghost_pid" || { sed 's/^/#   /' "$TEST_TMP/ghost.out" | tail -20; fail "fio with the active frozen failed"; }
head -c 4M /dev/zero | tr '\0' '\125' >"$TEST_TMP/new"
dd if="$TEST_TMP/new" of="$dev" bs=1M seek=170 oflag=direct,sync status=none || fail "the new data could not be written"
[ -n "$thawed" ] || kill -CONT "${PID[$active]}"
wait_state "$active" passive 60
grep -q 'lost the media' "$TEST_TMP/$active.log" || fail "the thawed node did not notice the fence"
cmp -s "$TEST_TMP/new" <(dd if="$dev" bs=1M skip=170 count=4 iflag=direct status=none) ||
	fail "a stale write of the frozen node reached the media after the fence"
diag "ghost writes: node $active frozen and thawed after node $passive took over; none of its writes landed"
active=$passive

# Orderly handover (SIGHUP) to the passive node under fio, then failback.
for turn in handover failback; do
	passive=$(other $active)
	fio --name=$turn --filename="$dev" --ioengine=libaio --direct=1 --sync=1 --rw=randwrite --bs=8k \
		--iodepth=8 --size=16M --offset=$((HA_FIO_MB + 16))M --verify=crc32c --verify_fatal=1 \
		--do_verify=1 --verify_state_save=0 --output-format=json --output="$TEST_TMP/$turn.json" &
	fio_pid=$!
	sleep 2
	kill -HUP "${PID[$active]}" || fail "$turn: cannot signal node $active"
	wait_state "$passive" active 30
	grep -q "^last_failover_reason handover from dpu-$active" "$TEST_TMP/$passive.status" ||
		fail "$turn: node $passive did not take over by handover"
	wait_state "$active" passive 30
	wait "$fio_pid" || { sed 's/^/#   /' "$TEST_TMP/$turn.json" | tail -20; fail "fio across the $turn failed"; }
	[ "$(jq '[.jobs[].error] | add' "$TEST_TMP/$turn.json")" = 0 ] || fail "fio reported an error across the $turn"
	diag "$turn: node $active -> node $passive under fio, no error ($(sed -n 's/^last_failover_took_ms //p' "$TEST_TMP/$passive.status") ms)"
	active=$passive
done

for n in a b; do
	grep -q panicked "$TEST_TMP/$n.log" && fail "node $n panicked"
done
dmesg_since_mark | grep -q "I/O error, dev ${dev#/dev/}," && fail "an I/O error reached $dev"
dmesg_check_clean
exit $KSFT_PASS
