#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# A volume member on another machine, configured from the host through
# dpublk's configfs (issue 17): an SSD handle whose `device` names a
# namespace of Linux's nvmet-tcp (`tcp ADDRESS SERVICE SUBNQN [NSID]`)
# becomes a remote SSD of the accelerator (Remote SSD Add), and a raid10
# volume mirrors a local SSD onto it. fio verify runs while nvmet stops
# serving the subsystem (the member fails, the volume degrades and keeps
# serving) and serves it again (the accelerator reconnects and rebuilds
# the member); every block verifies and the remote member's bytes equal
# the local member's. Bad `device` values fail with EINVAL, log one line
# and change nothing; an address where nothing answers fails with
# EHOSTUNREACH; detach is refused while the volume uses the SSD, and
# detach and rmdir give the SSD's index back (Remote SSD Remove).
#
# The accelerator's dpuemu runs on the host, behind QEMU, and the "other
# machine" is this guest: nvmet-tcp listens here on GUESTPORT, and
# scripts/vm.sh --net-forward HOSTPORT:GUESTPORT forwards the host's
# 127.0.0.1:HOSTPORT to it (slirp), so the accelerator's initiator reaches
# it at 127.0.0.1:HOSTPORT.
# dpublk-timeout: 1200
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"
. "$(dirname "$0")/nvmet_common.sh"
. "$(dirname "$0")/protection_common.sh"

accelerator_pci >/dev/null || skip "no accelerator function (run with --accelerator)"
[[ ${DPUBLK_NET_FORWARD:-} =~ ^([0-9]+):([0-9]+)$ ]] ||
	skip "no forward from the host into the guest (run scripts/vm.sh with --net-forward)"
HOST_PORT=${BASH_REMATCH[1]} GUEST_PORT=${BASH_REMATCH[2]}
LOG=${DPUBLK_RUNDIR:-}/dpuemu.log
[ -r "$LOG" ] || skip "dpuemu's log is not readable (not run by scripts/vm.sh --accelerator)"
command -v fio >/dev/null && command -v jq >/dev/null || fail "fio and jq are needed"
# virtme-ng configures the user network by DHCP; if that did not happen,
# slirp's fixed addresses work as well (the forward goes to 10.0.2.15).
if ! ip -4 addr show 2>/dev/null | grep -q 'inet 10\.0\.2\.15/' && [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 2>/dev/null
fi
ip -4 addr show 2>/dev/null | grep -q 'inet 10\.0\.2\.15/' || fail "the guest has no 10.0.2.15 for the forward to reach"
nvmet_setup

SHELF=nqn.2026-12.org.dpublk:remote-shelf
DEVICE="tcp 127.0.0.1 $HOST_PORT $SHELF"
VOL_MB=64

unload_dpublk
dmesg_mark
load_dpublk_management

# The shelf: a tmpfs image (nvmet takes a file's block size from its file
# system) as namespace 1 of $SHELF. nvmet_export serves it on the guest's
# loopback; the forward needs a port on the guest's network address, so
# port FWD serves it there too, and the outage takes the subsystem off it.
mkdir "$TEST_TMP/shelf"
mount -t tmpfs -o size=160M remote-shelf "$TEST_TMP/shelf" || fail "cannot mount a tmpfs"
on_exit 'umount "$TEST_TMP/shelf"'
REMOTE_IMG=$TEST_TMP/shelf/remote.img
truncate -s 128M "$REMOTE_IMG"
nvmet_export "$SHELF" "$REMOTE_IMG" 7 $((GUEST_PORT + 1))
FWD=8
mkdir "$NVMET/ports/$FWD" || fail "cannot create nvmet port $FWD"
on_exit "nvmet_unlink $SHELF $FWD; rmdir $NVMET/ports/$FWD"
echo tcp >"$NVMET/ports/$FWD/addr_trtype"
echo ipv4 >"$NVMET/ports/$FWD/addr_adrfam"
echo 0.0.0.0 >"$NVMET/ports/$FWD/addr_traddr"
echo "$GUEST_PORT" >"$NVMET/ports/$FWD/addr_trsvcid"
nvmet_link "$SHELF" "$FWD"
diag "nvmet serves $SHELF on the guest's port $GUEST_PORT, the host's 127.0.0.1:$HOST_PORT"

# log_mark / wait_log PATTERN SECONDS WHAT: waits for dpuemu to log
# PATTERN after the last log_mark.
log_from=1
log_mark() { log_from=$(($(wc -l <"$LOG") + 1)); }
log_since() { tail -n +"$log_from" "$LOG"; }
wait_log() {
	local i
	for i in $(seq 1 $(($2 * 10))); do
		log_since | grep -q "$1" && return 0
		sleep 0.1
	done
	log_since | tail -20 | sed 's/^/#   /'
	fail "$3: dpuemu never logged '$1'"
}
# wait_volume_state NAME STATE SECONDS: waits for volumes/NAME/state.
wait_volume_state() {
	local i
	for i in $(seq 1 $(($3 * 10))); do
		[ "$(cat "$DPUBLK_CFS/volumes/$1/state")" = "$2" ] && return 0
		sleep 0.1
	done
	fail "volumes/$1 is $(cat "$DPUBLK_CFS/volumes/$1/state"), not $2, after $3 s"
}

# expect ERRNO DIR LOGTEXT COMMAND...: refused with ERRNO, one kernel log
# line with LOGTEXT and the errno, nothing changed (the handle's
# attributes, the tree, the accelerator's volumes), and nothing added in
# the accelerator.
declare -A MSG=(
	[EINVAL]="Invalid argument" [EBUSY]="Device or resource busy" [EEXIST]="File exists"
	[EHOSTUNREACH]="No route to host"
)
cases=0
expect() {
	local errno=$1 dir=$2 logtext=$3 before after mark
	shift 3
	cases=$((cases + 1))
	before=$(object_state "$dir"; tree_state)
	mark="remote-case-$cases-$RANDOM"
	echo "$mark" >/dev/kmsg
	log_mark
	if "$@" 2>"$TEST_TMP/case.err"; then
		fail "case $cases ($*) succeeded"
	fi
	grep -q "${MSG[$errno]}" "$TEST_TMP/case.err" ||
		fail "case $cases ($*): expected $errno, got: $(cat "$TEST_TMP/case.err")"
	after=$(object_state "$dir"; tree_state)
	[ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after") | sed 's/^/#   /'; fail "case $cases ($*) changed something"; }
	[ "$(dmesg | sed -n "/$mark/,\$p" | grep -F "$logtext" | grep -c "($errno)")" = 1 ] ||
		{ dmesg | sed -n "/$mark/,\$p" | sed 's/^/#   /'; fail "case $cases ($*): not one log line '$logtext ... ($errno)'"; }
	! log_since | grep -q 'SSD [0-9]*: remote SSD ' || fail "case $cases ($*): the accelerator added or removed a remote SSD"
}
w() { echo "$2" >"$1"; } # w PATH VALUE: a raw write for expect


attach_ssd local 0
R=$DPUBLK_CFS/ssds/shelf
mkdir "$R" || fail "mkdir ssds/shelf"

# 1. Bad values: EINVAL from the parser, nothing sent to the accelerator.
for bad in "tcp" "tcp 127.0.0.1" "tcp 127.0.0.1 $HOST_PORT" "tcp  127.0.0.1 $HOST_PORT $SHELF" \
	"tcp 127.0.0.1  $HOST_PORT $SHELF" "tcp localhost $HOST_PORT $SHELF" "tcp 127.0.0.256 $HOST_PORT $SHELF" \
	"tcp [::1] $HOST_PORT $SHELF" "tcp 0.0.0.0 $HOST_PORT $SHELF" "tcp :: $HOST_PORT $SHELF" \
	"tcp 224.0.0.1 $HOST_PORT $SHELF" "tcp ff02::1 $HOST_PORT $SHELF" "tcp 127.0.0.1 0 $SHELF" "tcp 127.0.0.1 65536 $SHELF" "tcp 127.0.0.1 0$HOST_PORT $SHELF" \
	"tcp 127.0.0.1 $HOST_PORT shelf" "tcp 127.0.0.1 $HOST_PORT nqn.2014-08.org.nvmexpress.discovery" \
	"tcp 127.0.0.1 $HOST_PORT $SHELF 0" "tcp 127.0.0.1 $HOST_PORT $SHELF 4294967294" \
	"tcp 127.0.0.1 $HOST_PORT $SHELF 01" "tcp 127.0.0.1 $HOST_PORT $SHELF 1 2" \
	"tcp 127.0.0.1 $HOST_PORT $SHELF -1"; do
	expect EINVAL "$R" "ssds/shelf: device:" w "$R/device" "$bad"
done
# Nothing answers at the host's port 1: EHOSTUNREACH, from the accelerator.
expect EHOSTUNREACH "$R" "ssds/shelf: device: the accelerator cannot reach" w "$R/device" "tcp 127.0.0.1 1 $SHELF"
grep -q 'remote SSD shelf: 127.0.0.1:1 ' "$LOG" || fail "dpuemu did not log the unreachable remote"
# NSID 2 is not in the subsystem: nvmet identifies it as a namespace of no
# blocks, which the accelerator cannot use.
expect EINVAL "$R" "ssds/shelf: device: the remote namespace's size or block size" \
	w "$R/device" "tcp 127.0.0.1 $HOST_PORT $SHELF 2"
[ "$(cat "$R/state")" = unconfigured ] || fail "ssds/shelf is $(cat "$R/state") after the refused values"
diag "$cases refused values: errno, one log line, nothing changed"

# 2. The remote SSD: Remote SSD Add, the index published, attached.
log_mark
cfs_write "$R/device" "$DEVICE"
[ "$(cat "$R/state")" = attached ] || fail "ssds/shelf is $(cat "$R/state") after the device write"
[ "$(cat "$R/attach")" = 1 ] || fail "ssds/shelf/attach does not read 1"
[ "$(cat "$R/device")" = "$DEVICE 1" ] || fail "ssds/shelf/device reads '$(cat "$R/device")'"
index=$(cat "$R/index")
[ "$index" -ge 2 ] || fail "the remote SSD has index $index, one of the two local SSDs'"
[ "$(cat "$R/capacity")" = $((128 << 20)) ] || fail "ssds/shelf/capacity is $(cat "$R/capacity"), nvmet's image 128 MiB"
log_since | grep -q "SSD $index: remote SSD shelf (127.0.0.1:$HOST_PORT $SHELF namespace 1)" ||
	fail "dpuemu did not log SSD $index as the remote SSD"
dmesg | grep -q "ssds/shelf: tcp 127.0.0.1 $HOST_PORT $SHELF namespace 1 is SSD $index" ||
	fail "no kernel log line for the remote SSD"
expect EBUSY "$R" "ssds/shelf: device: detach the SSD first" w "$R/device" "$DEVICE"
mkdir "$DPUBLK_CFS/ssds/twin" || fail "mkdir ssds/twin"
expect EEXIST "$DPUBLK_CFS/ssds/twin" "ssds/twin: device: that remote namespace is an SSD" \
	w "$DPUBLK_CFS/ssds/twin/device" "$DEVICE 1"
rmdir "$DPUBLK_CFS/ssds/twin" || fail "rmdir ssds/twin"
diag "nvmet's namespace is SSD $index of the accelerator"

# 3. A raid10 volume over the local SSD and the remote one.
dev=$(make_volume mirror local,shelf raid10 ${VOL_MB}M copies=2)
[ "$(cat "$DPUBLK_CFS/volumes/mirror/state")" = optimal ] || fail "the new volume is not optimal"
expect EBUSY "$R" "ssds/shelf: attach: a volume stores data on the SSD" w "$R/attach" 0
seeded before 0 16 1717 --do_verify=1
diag "16 MiB written and verified on the optimal mirror"

# 4. nvmet stops serving the shelf under a rate-limited fio verify job (its
#    timeline does not depend on the machine's speed), then serves it
#    again: the member fails, the volume keeps serving, the member comes
#    back through a rebuild.
out=$TEST_TMP/outage.json
fio --name=outage --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
	--iodepth=4 --offset=16M --size=16M --rate_iops=200 --randseed=2929 --verify=crc32c \
	--verify_fatal=1 --do_verify=1 --verify_state_save=0 --output-format=json --output="$out" &
fio_pid=$!
on_exit "kill $fio_pid 2>/dev/null; wait $fio_pid 2>/dev/null"
sleep 3
kill -0 "$fio_pid" 2>/dev/null || fail "fio finished before the outage: nothing was in flight"
log_mark
nvmet_unlink "$SHELF" "$FWD"
wait_log 'nvmf remote SSD shelf: .* lost' 60 "the outage"
wait_volume_state mirror degraded 60
grep -qx 'state degraded' "$DPUBLK_CFS/volumes/mirror/stats" || fail "volumes/mirror/stats do not say degraded"
[ "$(cat "$R/state")" = attached ] || fail "ssds/shelf is $(cat "$R/state") during the outage (the accelerator keeps it)"
diag "nvmet stopped serving the shelf; the member failed, the volume is degraded"
sleep 5
kill -0 "$fio_pid" 2>/dev/null || fail "fio ended during the outage (it should still be writing)"
nvmet_link "$SHELF" "$FWD"
wait_log 'nvmf remote SSD shelf: .* is back' 120 "the return"
wait_log "SSD $index re-added to its array, rebuilding" 30 "the re-add"
wait "$fio_pid" || { sed 's/^/#   /' "$out" | tail -20; fail "fio across the outage failed"; }
[ "$(jq '[.jobs[].error] | add' "$out")" = 0 ] || fail "fio reported an error across the outage"
wait_log 'accel: rebuild complete' 900 "the rebuild"
wait_volume_state mirror optimal 60
diag "the member was rebuilt; fio across the outage wrote and verified $(jq '[.jobs[].write.io_bytes] | add' "$out") bytes"
seeded after 32 16 3131 --do_verify=1
seeded before 0 16 1717 --verify_only=1
seeded outage 16 16 2929 --verify_only=1

# 5. The remote member holds what the local member holds. The accelerator
#    checks every row of the mirror (a scrub compares the copies, reading
#    the remote one over TCP); then the images are compared here: marker
#    blocks written through the volume sit at the same offset in both, and
#    from the first of them to the end of nvmet's image (data rows; the
#    volume layer places blocks as it allocates them; below the data rows
#    are the members' own superblocks and journals, which may differ) the
#    bytes are equal.
scrub_report=$(scrub mirror check)
[ "$scrub_report" = "mismatches 0 repaired 0" ] || fail "a scrub of the rebuilt mirror found: $scrub_report"
MARKER=$(printf 'dpublk-remote-marker-%010d' $((RANDOM * 32768 + RANDOM)))
for i in 0 1 2 3; do
	{ printf '%s-%d' "$MARKER" "$i"; head -c 4096 /dev/urandom; } | head -c 4096 >"$TEST_TMP/block$i"
	dd if="$TEST_TMP/block$i" of="$dev" bs=4k seek=$(((48 + 4 * i) * 256)) oflag=direct conv=fsync status=none ||
		fail "cannot write marker $i"
done
sync
LOCAL_IMG=${DPUBLK_IMAGES_DIR:-$DPUBLK_RUNDIR}/ssd0.img
[ -r "$LOCAL_IMG" ] || fail "the local SSD's image $LOCAL_IMG is not readable"
# find_marker I IMAGE: the byte offset of marker I's block in place in
# IMAGE: its last copy (each write goes through the member's journal,
# which lies before the data rows, so a recent block has a copy there too).
find_marker() {
	grep -obaF "$MARKER-$1" "$2" | tail -1 | cut -d: -f1
}
first=
for i in 0 1 2 3; do
	lat=$(find_marker "$i" "$LOCAL_IMG")
	rat=$(find_marker "$i" "$REMOTE_IMG")
	[ -n "$lat" ] || fail "marker $i is not in the local SSD's image"
	[ -n "$rat" ] || fail "marker $i is not in nvmet's image"
	[ "$lat" = "$rat" ] || fail "marker $i is at $lat on the local SSD, at $rat on nvmet's (the members differ)"
	[ $((lat % 4096)) = 0 ] || fail "marker $i is not block-aligned ($lat)"
	for img in "$LOCAL_IMG" "$REMOTE_IMG"; do
		cmp -s "$TEST_TMP/block$i" <(dd if="$img" bs=4k skip=$((lat / 4096)) count=1 status=none) ||
			fail "marker $i's block at $lat in $img is not what was written"
	done
	[ -z "$first" ] || [ "$lat" -lt "$first" ] && first=$lat
done
span=$(((128 << 20) - first))
cmp -n "$span" -i "$first:$first" "$LOCAL_IMG" "$REMOTE_IMG" >"$TEST_TMP/cmp.out" 2>&1 ||
	{ sed 's/^/#   /' "$TEST_TMP/cmp.out"; fail "the remote member differs from the local member after $first"; }
below=$(cmp -l -n "$first" "$LOCAL_IMG" "$REMOTE_IMG" 2>/dev/null | awk '{ print int(($1 - 1) / 4096) }' | uniq | wc -l)
diag "scrub: 0 mismatches; markers at the same offsets; $((span >> 20)) MiB from $first equal ($below metadata blocks below differ)"

# 6. Removal: detach gives the index back (Remote SSD Remove), attach adds
#    the remote again, rmdir removes it.
remove_volume mirror
log_mark
cfs_write "$R/attach" 0
[ "$(cat "$R/state")" = detached ] || fail "ssds/shelf is $(cat "$R/state") after detach"
[ "$(cat "$R/index")" = -1 ] || fail "ssds/shelf keeps index $(cat "$R/index") after detach"
[ "$(cat "$R/device")" = "$DEVICE 1" ] || fail "ssds/shelf/device reads '$(cat "$R/device")' after detach"
wait_log "SSD $index: remote SSD shelf removed" 10 "the detach"
cfs_write "$R/attach" 1
[ "$(cat "$R/state")" = attached ] || fail "ssds/shelf is $(cat "$R/state") after attach"
index=$(cat "$R/index")
log_mark
rmdir "$R" || fail "rmdir ssds/shelf"
wait_log "SSD $index: remote SSD shelf removed" 10 "the rmdir"
detach_ssd local
dmesg_check_clean
exit $KSFT_PASS
