#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Host-side agent of a VM run: serves requests that guest tests drop into
# RUNDIR/ctl/ (the guest sees RUNDIR at the same path through its 9p root).
#
#   request file  RUNDIR/ctl/<id>.req   one line: COMMAND [ARGS]
#   answer file   RUNDIR/ctl/<id>.done  first line: ok|error, then output
#
# Commands:
#   dpuemu-kill              kill -9 the emulator (a crash, not a shutdown)
#   dpuemu-crash             SIGUSR2 it: with --power-loss-sim a power cut
#                            (unflushed writes torn or lost, then exit; the
#                            report goes to --power-loss-report's file)
#   dpuemu-freeze            SIGSTOP the emulator (a hung device)
#   dpuemu-thaw              SIGCONT it
#   dpuemu-lose-io           SIGUSR1 it: the accelerator loses (never
#                            completes) its next I/O command
#   dpuemu-start             start it again with the same arguments and images
#   device-del ID            hot-unplug a vfio-user function (QMP device_del)
#   device-add ID            hot-plug it again (QMP device_add, same socket)
#   dpuemu-cpu SECONDS       CPU seconds dpuemu used during the next SECONDS
#   qemu-cpu SECONDS         the same for QEMU
#   cpu-sample               one line 'hz=H qemu=T dpuemu=T': the clock tick
#                            rate and the user+system ticks QEMU and dpuemu
#                            have used so far (0 for one not running); a
#                            benchmark takes one before and one after a job
#   image-count HEX SSD...   how often the bytes HEX occur in each SSD image
#                            of the run (SSD = ssd0, ssd1, ...), one line
#                            'SSD COUNT' each: tests scan the raw media
. "$(dirname "$0")/lib.sh"
rundir=$1
ctl=$rundir/ctl
mkdir -p "$ctl"

cpu_ticks() { # cpu_ticks PID: user+system clock ticks, children included
	awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
measure_cpu() { # measure_cpu PID SECONDS: CPU seconds used in that window
	local pid=$1 secs=$2 hz before after
	hz=$(getconf CLK_TCK)
	before=$(cpu_ticks "$pid")
	sleep "$secs"
	after=$(cpu_ticks "$pid")
	awk -v a="$after" -v b="$before" -v hz="$hz" 'BEGIN { printf "%.3f\n", (a - b) / hz }'
}

own_ticks() { # own_ticks PID: user+system clock ticks of the process itself
	awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
qemu_pid() { pgrep -f -n "qemu-system-x86_64.*$rundir"; }

count_bytes() { # count_bytes HEX FILE: occurrences of the bytes in FILE
	python3 - "$1" "$2" <<'PY'
import sys
pattern, count, tail = bytes.fromhex(sys.argv[1]), 0, b""
with open(sys.argv[2], "rb") as f:
    while chunk := f.read(16 << 20):
        data = tail + chunk
        count += data.count(pattern)
        # Keep less than one pattern, so a match across two chunks is
        # counted once and none twice.
        tail = data[max(0, len(data) - len(pattern) + 1):]
print(count)
PY
}

serve() { # serve COMMAND [ARGS]
	case $1 in
	dpuemu-kill)
		local pid
		pid=$(cat "$rundir/dpuemu.pid")
		kill -9 "$pid" && while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
		echo "killed $pid" ;;
	dpuemu-crash)
		local pid
		pid=$(cat "$rundir/dpuemu.pid")
		kill -USR2 "$pid" || return 1
		# Without --power-loss-sim dpuemu ignores SIGUSR2 and stays up.
		for _ in $(seq 1 1000); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
		kill -0 "$pid" 2>/dev/null && { echo "dpuemu $pid still running 10 s after SIGUSR2"; return 1; }
		echo "power cut $pid" ;;
	dpuemu-freeze) kill -STOP "$(cat "$rundir/dpuemu.pid")" && echo frozen ;;
	dpuemu-thaw) kill -CONT "$(cat "$rundir/dpuemu.pid")" && echo thawed ;;
	dpuemu-lose-io) kill -USR1 "$(cat "$rundir/dpuemu.pid")" && echo armed ;;
	dpuemu-start)
		# shellcheck disable=SC2046 # the saved arguments are a word list
		"$DPUBLK_TOP/scripts/dpuemu-start.sh" $(cat "$rundir/dpuemu.args") >/dev/null ;;
	device-del)
		"$DPUBLK_TOP/scripts/qmp.py" "$rundir/qmp.sock" device_del "{\"id\":\"$2\"}" ;;
	device-add)
		"$DPUBLK_TOP/scripts/qmp.py" "$rundir/qmp.sock" device_add "$(cat "$rundir/devices/$2.json")" ;;
	dpuemu-cpu) measure_cpu "$(cat "$rundir/dpuemu.pid")" "$2" ;;
	qemu-cpu) measure_cpu "$(qemu_pid)" "$2" ;;
	cpu-sample)
		local qemu dpuemu
		# A stale pid file of a killed dpuemu must not count a stranger.
		dpuemu=$(cat "$rundir/dpuemu.pid" 2>/dev/null || true)
		[ -n "$dpuemu" ] && grep -q dpuemu "/proc/$dpuemu/comm" 2>/dev/null || dpuemu=
		qemu=$(qemu_pid || true)
		printf 'hz=%s qemu=%s dpuemu=%s\n' "$(getconf CLK_TCK)" \
			"$([ -n "$qemu" ] && own_ticks "$qemu" || echo 0)" \
			"$([ -n "$dpuemu" ] && own_ticks "$dpuemu" || echo 0)" ;;
	image-count)
		local hex=$2 ssd
		shift 2
		[[ $hex =~ ^([0-9a-f]{2})+$ ]] || { echo "not a hex byte string: $hex"; return 1; }
		for ssd in "$@"; do
			[[ $ssd =~ ^ssd[0-9]+$ ]] || { echo "not an SSD name: $ssd"; return 1; }
			printf '%s %s\n' "$ssd" "$(count_bytes "$hex" "${DPUBLK_IMAGES_DIR:-$rundir}/$ssd.img")"
		done ;;
	*) echo "unknown command: $1"; return 1 ;;
	esac
}

while [ -d "$rundir" ]; do
	for req in "$ctl"/*.req; do
		[ -e "$req" ] || continue
		read -r -a words <"$req"
		rm -f "$req"
		if out=$(serve "${words[@]}" 2>&1); then status=ok; else status=error; fi
		printf '%s\n%s\n' "$status" "$out" >"${req%.req}.done.tmp"
		mv "${req%.req}.done.tmp" "${req%.req}.done"
	done
	sleep 0.2
done
