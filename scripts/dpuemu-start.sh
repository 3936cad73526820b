#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Starts dpuemu for a VM run and prints the vfio-user socket paths to attach,
# accelerator first, then the SSD functions.
#
#   dpuemu-start.sh RUNDIR NSSDS SSD_SIZE [extra dpuemu args...]
#
# SSD_SIZE is one size for every SSD, or a comma-separated list: SSD i gets
# the i-th size, and the last size repeats for the SSDs after it
# (1G,4G = SSD 0 of 1 GiB, all others of 4 GiB).
#
# SSD images live in RUNDIR/ssd<i>.img (kept across dpuemu restarts within the
# run), or in $DPUBLK_IMAGES_DIR when set (kept across runs); the log goes to RUNDIR/dpuemu.log and the pid to RUNDIR/dpuemu.pid.
. "$(dirname "$0")/lib.sh"
rundir=$1 nssds=$2 ssd_size=$3
shift 3
dpuemu=${DPUBLK_DPUEMU:-$DPUBLK_TOP/target/release/dpuemu}
[ -x "$dpuemu" ] || die "dpuemu is not built ($dpuemu): run make"
args=(--socket-dir "$rundir/sockets")
IFS=, read -r -a sizes <<<"$ssd_size"
for i in $(seq 0 $((nssds - 1))); do
	s=${sizes[$((i < ${#sizes[@]} ? i : ${#sizes[@]} - 1))]}
	args+=(--ssd "${DPUBLK_IMAGES_DIR:-$rundir}/ssd$i.img:$s")
done
mkdir -p "$rundir/sockets" "${DPUBLK_IMAGES_DIR:-$rundir}"
# Sockets of an emulator that was killed are stale: a listener must not be
# mistaken for the new one.
rm -f "$rundir"/sockets/*.sock
setsid "$dpuemu" "${args[@]}" "$@" >>"$rundir/dpuemu.log" 2>&1 </dev/null &
echo $! >"$rundir/dpuemu.pid"
# Wait until every socket listens (or dpuemu dies).
want=("$rundir/sockets/accel.sock")
for i in $(seq 0 $((nssds - 1))); do want+=("$rundir/sockets/ssd$i.sock"); done
for _ in $(seq 1 100); do
	ready=1
	for sock in "${want[@]}"; do [ -S "$sock" ] || ready=0; done
	[ "$ready" = 1 ] && break
	kill -0 "$(cat "$rundir/dpuemu.pid")" 2>/dev/null || { tail -20 "$rundir/dpuemu.log" >&2; die "dpuemu exited"; }
	sleep 0.1
done
[ "$ready" = 1 ] || { tail -20 "$rundir/dpuemu.log" >&2; die "dpuemu sockets did not appear"; }
printf '%s\n' "${want[@]}"
