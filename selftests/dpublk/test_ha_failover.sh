#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Two dpuemu nodes over the same two SSD images (a raid10 volume), active
# and passive (--ha-config, Documentation/ha.rst), both serving the same
# NVMe/TCP subsystem; Linux's native NVMe multipath connects to both. fio
# randwrite with verify (O_SYNC: every acknowledged write is durable) runs
# while the active node is SIGKILLed HA_KILLS times (the other node takes
# over and tells the hosts with an ANA change notice; the killed one is
# restarted and comes back passive); each time, a probe write outside
# fio's range measures how long I/O stalled (printed per kill with where
# the time went, then p50, p99 and the worst). Beside fio, a writer of
# acknowledged writes: every O_DIRECT+O_DSYNC 4 KiB write carries its
# sequence number and block, is logged once acknowledged, and after the
# kills every logged write must be on the device. Then an
# orderly handover (SIGHUP) under fio: no error either. A ghost-write
# check: the active frozen with writes in flight, the passive takes over,
# new data goes over the same blocks, the old node is thawed: none of its
# stale writes lands. Fails on any fio
# error or verify mismatch, a missing acknowledged write, a stall over
# HA_MAX_STALL seconds or a p99 over HA_MAX_P99_MS.
# Knobs: HA_KILLS (3; make crash-ha N=50 runs 50 in one boot),
# HA_TIMEOUT_MS (the heartbeat timeout, 500), HA_MAX_STALL (5 s),
# HA_MAX_P99_MS (unset: printed, not judged), HA_FIO_MB (48).
# Needs a kernel with CONFIG_NVME_MULTIPATH (skips otherwise).
# dpublk-timeout: 900
. "$(dirname "$0")/test_common.sh"

DPUEMU=${DPUBLK_DPUEMU:-$DPUBLK_TOP/target/release/dpuemu}
HA_KILLS=${HA_KILLS:-3}
HA_TIMEOUT_MS=${HA_TIMEOUT_MS:-500}
HA_MAX_STALL=${HA_MAX_STALL:-5}
HA_MAX_P99_MS=${HA_MAX_P99_MS:-}
HA_FIO_MB=${HA_FIO_MB:-48}
# The acknowledged-writes region: 4 KiB blocks in [100, 150) MiB, away from
# fio (from 0), the handover's fio, the probe (160 MiB) and the ghost
# check (170 MiB).
ACK_FIRST=$((100 << 8))
ACK_BLOCKS=$((50 << 8))
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
timeout $HA_TIMEOUT_MS
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
# log_ms NODE PATTERN: the time of day (ms, UTC) of NODE's last log line
# matching PATTERN (dpuemu logs HH:MM:SS.mmm in UTC).
log_ms() {
	grep -a -- "$2" "$TEST_TMP/$1.log" | tail -1 |
		awk '{ split($1, t, /[:.]/); print ((t[1] * 60 + t[2]) * 60 + t[3]) * 1000 + t[4] }'
}
now_ms() { echo $(($(date -u +%s%3N) % 86400000)); }
# percentile P VALUES...: the nearest-rank percentile.
percentile() {
	local p=$1; shift
	printf '%s\n' "$@" | sort -n | awk -v p="$p" '{ v[NR] = $1 } END { r = int((p * NR + 99) / 100); if (r < 1) r = 1; print v[r] }'
}

# The acknowledged-writes writer: one synchronous O_DIRECT 4 KiB write at a
# time to a random block of the region, each carrying "dpublk-ack SEQ
# BLOCK"; a write is appended to the log only once dd returned success
# (acknowledged, and durable: O_DSYNC). Stops between writes when the stop
# file appears; a failed write is an error that reached the application.
ack_writer() {
	local seq=0 blk
	while [ ! -e "$TEST_TMP/ack.stop" ]; do
		seq=$((seq + 1))
		blk=$((ACK_FIRST + (RANDOM * 32768 + RANDOM) % ACK_BLOCKS))
		if { printf 'dpublk-ack %08d %08d\n' "$seq" "$blk"; head -c 4067 /dev/zero; } |
			dd of="$dev" bs=4096 count=1 seek="$blk" oflag=direct,dsync iflag=fullblock status=none; then
			echo "$blk $seq" >>"$TEST_TMP/ack.log"
		else
			echo "write $seq to block $blk failed" >>"$TEST_TMP/ack.errors"
		fi
	done
}
# ack_check: every acknowledged write is on the device, the last one of
# each block exactly (one writer, one write at a time: nothing later can
# have overwritten it). Prints the counts; fails on a missing write.
ack_check() {
	local acked region=$TEST_TMP/ack.region missing
	[ ! -s "$TEST_TMP/ack.errors" ] || { sed 's/^/#   /' "$TEST_TMP/ack.errors" | head; fail "acknowledged writer: writes failed"; }
	acked=$(wc -l <"$TEST_TMP/ack.log")
	[ "$acked" -gt 0 ] || fail "acknowledged writer: no write completed"
	dd if="$dev" of="$region" bs=1M skip=$((ACK_FIRST >> 8)) count=$((ACK_BLOCKS >> 8)) iflag=direct status=none ||
		fail "cannot read the acknowledged-writes region back"
	# What the device holds, as "BLOCK SEQ" from each header's byte offset,
	# against the last acknowledged SEQ of each block.
	missing=$(grep -a -b -o 'dpublk-ack [0-9]\{8\} [0-9]\{8\}' "$region" |
		awk -v first="$ACK_FIRST" -F '[: ]' '
			NR == FNR { last[$1] = $2; next }
			$1 % 4096 == 0 { at = first + $1 / 4096; if ($4 + 0 == at) found[at] = $3 + 0 }
			END {
				n = 0
				for (b in last) {
					has = b in found
					if (has && found[b] == last[b] + 0) continue
					if (++n <= 5) printf "#   block %d: acknowledged %d, the device has %s\n", b, last[b], has ? found[b] : "no write of it" > "/dev/stderr"
				}
				print n
			}' "$TEST_TMP/ack.log" -)
	[ "$missing" = 0 ] || fail "acknowledged writer: $missing of the acknowledged blocks are not on the device"
	diag "acknowledged writes: $acked acknowledged across the kills ($(cut -d' ' -f1 "$TEST_TMP/ack.log" | sort -u | wc -l) blocks), 0 missing"
}

on_exit 'touch "$TEST_TMP/ack.stop"; nvme disconnect -n "$NQN" >/dev/null 2>&1; kill_node a; kill_node b'

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
: >"$TEST_TMP/ack.log"
ack_writer &
ack_pid=$!
active=a
stalls=()
for k in $(seq 1 "$HA_KILLS"); do
	sleep 3
	# With many kills fio may finish first: run it again (it verifies
	# what it wrote each time).
	if ! kill -0 "$fio_pid" 2>/dev/null; then
		wait "$fio_pid" || { sed 's/^/#   /' "$out" | tail -20; fail "fio across the failovers failed"; }
		[ "$(jq '[.jobs[].error] | add' "$out")" = 0 ] || fail "fio reported an error across the failovers"
		fio --name=ha --filename="$dev" --ioengine=libaio --direct=1 --sync=1 --rw=randwrite --bs=8k \
			--iodepth=8 --size=${HA_FIO_MB}M --offset=0 --verify=crc32c --verify_fatal=1 --do_verify=1 \
			--verify_state_save=0 --output-format=json --output="$out" &
		fio_pid=$!
		sleep 1
	fi
	passive=$(other $active)
	wait_state "$passive" passive 30
	kill_node "$active"
	t0=$(date +%s%N)
	killed_ms=$(now_ms)
	timeout 60 dd if=/dev/urandom of="$dev" bs=4k count=1 seek=$((160 << 8)) oflag=direct,sync status=none ||
		fail "kill $k: the probe write failed or hung after node $active was killed"
	stall=$((($(date +%s%N) - t0) / 1000000))
	wait_state "$passive" active 30
	reason=$(sed -n 's/^last_failover_reason //p' "$TEST_TMP/$passive.status")
	took=$(sed -n 's/^last_failover_took_ms //p' "$TEST_TMP/$passive.status")
	gen=$(sed -n 's/^fence_generation //p' "$TEST_TMP/$passive.status")
	# Where the time went, from the new active's log: detecting the
	# silence, fencing and opening the volumes (replay), and the host
	# (the ANA change notice, its ANA log read, the requeued I/O).
	decided=$(($(log_ms "$passive" 'takes over:') - killed_ms))
	serving=$(($(log_ms "$passive" 'active with fence generation') - killed_ms))
	diag "kill $k: node $active SIGKILLed; I/O resumed after $stall ms: detected at $decided ms, serving at $serving ms (fence and replay $took ms), host $((stall - serving)) ms (node $passive: generation $gen, '$reason')"
	stalls+=("$stall")
	[ "$stall" -le $((HA_MAX_STALL * 1000)) ] || fail "kill $k: I/O stalled $stall ms (limit ${HA_MAX_STALL} s)"
	start_node "$active"
	wait_state "$active" passive 60
	active=$passive
done
touch "$TEST_TMP/ack.stop"
wait "$ack_pid"
p50=$(percentile 50 "${stalls[@]}")
p99=$(percentile 99 "${stalls[@]}")
worst=$(percentile 100 "${stalls[@]}")
diag "stalls over ${#stalls[@]} kills: p50 $p50 ms, p99 $p99 ms, max $worst ms (heartbeat timeout $HA_TIMEOUT_MS ms)"
[ -z "$HA_MAX_P99_MS" ] || [ "$p99" -le "$HA_MAX_P99_MS" ] || fail "stall p99 $p99 ms is over $HA_MAX_P99_MS ms"
wait "$fio_pid" || { sed 's/^/#   /' "$out" | tail -20; fail "fio across the failovers failed"; }
[ "$(jq '[.jobs[].error] | add' "$out")" = 0 ] || fail "fio reported an error across the failovers"
written=$(jq '[.jobs[].write.io_bytes] | add' "$out")
verified=$(jq '[.jobs[].read.io_bytes] | add' "$out")
[ "$verified" -gt 0 ] || fail "fio verified nothing"
diag "fio: $written bytes written and $verified verified across the kills (its last run); worst stall $worst ms"
ack_check

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
