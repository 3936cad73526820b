#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `make bench`: fio in one VM run on a dpublk disk, QEMU's own NVMe
# controller, null_blk and the data-service rows against the Linux stacks,
# every job repeated, with guest and host CPU per I/O; see
# Documentation/benchmarks.rst. Prints the tables (min, median and max of
# the repetitions, ratios of medians, stalled repetitions) and where the
# full results (results.md, results.json, fio's JSON) went.
#
#   scripts/bench.sh [--rows "LABEL..."] [--workloads "LABEL..."]
#                    [--reps N] [--runtime S] [--quick]
#
# --rows, --workloads  space-separated subsets of the DEVICES and WORKLOADS
#                      tables of scripts/guest/bench.sh (default: all)
# --reps N             repetitions of every job (default 3)
# --runtime S          measured seconds of every job, the data-service rows'
#                      too (default 6 and 5)
# --quick              a short check of the whole chain: rows dpublk and
#                      qemu-nvme, randread-4k-qd32, 3 repetitions of 3 s
#                      after 1 s of ramp, 256M devices (options after it
#                      override these)
#
# Environment (the options set these; `make bench ROWS=... WORKLOADS=...
# REPS=... RUNTIME=... QUICK=1` passes the options):
#   DPUBLK_BENCH_DIR       results go to DIR/<timestamp>/ (default
#                          $DPUBLK_CACHE/bench)
#   DPUBLK_BENCH_ROWS, DPUBLK_BENCH_WORKLOADS
#                          the subsets (DPUBLK_BENCH_DEVICES is the older
#                          name of DPUBLK_BENCH_ROWS)
#   DPUBLK_BENCH_REPS      repetitions (default 3)
#   DPUBLK_BENCH_SIZE      size of each tested device (default 1G)
#   DPUBLK_BENCH_SERVICE_SIZE
#                          size of the data-service rows' volumes (RAID6,
#                          EC, thin, dedup, encryption; default 512M)
#   DPUBLK_BENCH_RUNTIME   measured seconds per job (default 6)
#   DPUBLK_BENCH_SERVICE_RUNTIME
#                          the same for the data-service rows (default 5)
#   DPUBLK_BENCH_RAMP      seconds of each job before measuring (default 2)
#   DPUBLK_BENCH_DPUEMU_ARGS
#                          more dpuemu options for the run (e.g. "--poll-us 0"
#                          to measure without the workers' polling window)
. "$(dirname "$0")/lib.sh"

usage() { sed -n '3,/^\. /p' "$0" | sed '$d; s/^# \{0,1\}//'; }

positive() { # positive NAME VALUE: VALUE is a whole number >= 1
	[[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a whole number of at least 1, not '$2'"
}

while [ $# -gt 0 ]; do
	case $1 in
	--rows) [ $# -ge 2 ] || die "--rows needs a value"; export DPUBLK_BENCH_ROWS=$2; shift ;;
	--workloads) [ $# -ge 2 ] || die "--workloads needs a value"; export DPUBLK_BENCH_WORKLOADS=$2; shift ;;
	--reps) [ $# -ge 2 ] || die "--reps needs a value"; export DPUBLK_BENCH_REPS=$2; shift ;;
	--runtime)
		[ $# -ge 2 ] || die "--runtime needs a value"
		export DPUBLK_BENCH_RUNTIME=$2 DPUBLK_BENCH_SERVICE_RUNTIME=$2
		shift ;;
	--quick)
		export DPUBLK_BENCH_ROWS="dpublk qemu-nvme" DPUBLK_BENCH_WORKLOADS=randread-4k-qd32 \
			DPUBLK_BENCH_REPS=3 DPUBLK_BENCH_RUNTIME=3 DPUBLK_BENCH_SERVICE_RUNTIME=3 \
			DPUBLK_BENCH_RAMP=1 DPUBLK_BENCH_SIZE=256M ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
	shift
done
export DPUBLK_BENCH_ROWS=${DPUBLK_BENCH_ROWS:-${DPUBLK_BENCH_DEVICES:-}}
# table_labels NAME: the labels (first words) of the NAME=( ... ) table of
# the guest script, so a misspelt row fails here and not after the boot.
table_labels() {
	sed -n "/^$1=(/,/^)/p" "$DPUBLK_TOP/scripts/guest/bench.sh" | sed '1d;$d' |
		awk -F'"' '{ split($2, w, " "); print w[1] }'
}
for r in $DPUBLK_BENCH_ROWS; do
	table_labels DEVICES | grep -qxF -- "$r" || die "unknown row '$r' (rows: $(table_labels DEVICES | xargs))"
done
for w in ${DPUBLK_BENCH_WORKLOADS:-}; do
	table_labels WORKLOADS | grep -qxF -- "$w" ||
		die "unknown workload '$w' (workloads: $(table_labels WORKLOADS | xargs))"
done
positive DPUBLK_BENCH_REPS "${DPUBLK_BENCH_REPS:-3}"
positive DPUBLK_BENCH_RUNTIME "${DPUBLK_BENCH_RUNTIME:-6}"
positive DPUBLK_BENCH_SERVICE_RUNTIME "${DPUBLK_BENCH_SERVICE_RUNTIME:-5}"
[[ ${DPUBLK_BENCH_RAMP:-2} =~ ^[0-9]+$ ]] || die "DPUBLK_BENCH_RAMP must be a whole number, not '$DPUBLK_BENCH_RAMP'"

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	need_root
	"$DPUBLK_TOP/scripts/setup.sh"
	stamp=$(date -u +%Y%m%dT%H%M%SZ)
	# The chroot has no git; the commit is recorded from here.
	DPUBLK_BENCH_GIT=$(git -C "$DPUBLK_TOP" describe --always --dirty 2>/dev/null || echo unknown)
	export DPUBLK_BENCH_GIT
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	# The VM writes into the cache (the chroot and the guest see it); results
	# wanted elsewhere move there afterwards.
	DPUBLK_BENCH_STAMP=$stamp DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/bench.sh"
	results=$DPUBLK_CACHE/bench/$stamp
	if [ -n "${DPUBLK_BENCH_DIR:-}" ] && [ "$DPUBLK_BENCH_DIR" != "$DPUBLK_CACHE/bench" ]; then
		mkdir -p "$DPUBLK_BENCH_DIR"
		mv "$results" "$DPUBLK_BENCH_DIR/$stamp"
		results=$DPUBLK_BENCH_DIR/$stamp
	fi
	echo
	echo "results: $results (results.md, results.json, fio's JSON per device and workload)"
	exit
fi

out=$DPUBLK_CACHE/bench/${DPUBLK_BENCH_STAMP:?}
size=${DPUBLK_BENCH_SIZE:-1G}
svc_size=${DPUBLK_BENCH_SERVICE_SIZE:-512M}
mkdir -p "$out"
size_mb=$(($(numfmt --from=iec "$size") / 1048576))
svc_mb=$(($(numfmt --from=iec "$svc_size") / 1048576))

# The local SSDs, in index order: group, how many, size in MiB of each,
# and the rows of scripts/guest/bench.sh that use the group ("-": the
# dpublk row, always there). SSD 0 is the dpublk row's (namespace 1 passes
# its image through); every other group belongs to one data-service row,
# dpublk's on SSDs it attaches through configfs, the Linux stacks' on SSDs
# left to the nvme driver, and is only added when one of its rows runs.
# Sizes leave room for each row's volume of svc_mb: RAID6 over 4 and EC 4+2
# over 6 store it with their parity, md uses half of each member, a thin
# volume with snapshots gets its copies-on-write, dm-thin's pool holds two
# volumes and 64 MiB of metadata, dm-vdo's ~3 GiB of index and metadata.
# The images are sparse: only what is written takes host memory.
SSD_PLAN=(
	"passthrough 1 $size_mb            -"
	"raid6       4 $svc_mb             dpublk-raid6"
	"ec          6 $svc_mb             dpublk-ec"
	"md          4 $svc_mb             md-raid6"
	"thin0       1 $((svc_mb * 2))      dpublk-thin"
	"thin10      1 $((svc_mb * 3))      dpublk-thin-snap10"
	"dmthin      1 $((svc_mb * 4 + 64)) dm-thin,dm-thin-snap10"
	"reduce      1 $((svc_mb * 2))      dpublk-reduce"
	"vdo         1 $((4096 + svc_mb))   dm-vdo"
	"crypt       1 $((svc_mb * 2))      dpublk-crypt"
	"dmcrypt     1 $svc_mb              dm-crypt"
)
nssds=0 sizes= ssd_groups=()
for g in "${SSD_PLAN[@]}"; do
	read -r group count mb users <<<"$g"
	if [ "$users" != - ] && [ -n "${DPUBLK_BENCH_ROWS:-}" ]; then
		needed=0
		for u in ${users//,/ }; do [[ " $DPUBLK_BENCH_ROWS " == *" $u "* ]] && needed=1; done
		[ $needed = 1 ] || continue
	fi
	list=
	for _ in $(seq 1 "$count"); do
		list+=${list:+ }$nssds
		sizes+=${sizes:+,}${mb}M
		nssds=$((nssds + 1))
	done
	ssd_groups+=("BENCH_SSDS_$group=$list")
done

# The hardware of the device table's rows: the accelerator with the SSDs
# above, SSD 0's image passed through as namespace 1 (dpublk), QEMU's NVMe
# controller with an image of the same size in the same run directory, and
# RAM for dm-vdo (its index and block map cache take about 450 MiB).
export DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0${DPUBLK_BENCH_DPUEMU_ARGS:+ $DPUBLK_BENCH_DPUEMU_ARGS}"
# vm.sh's time limit (DPUBLK_VM_TIMEOUT, made for test suites) would cut a
# full run short: allow every job of the tables (37 per repetition) its
# ramp, window and half a minute of start, stop and setup, and a quarter of
# an hour for boot and preloads. A hung guest is still stopped.
max_runtime=$(( ${DPUBLK_BENCH_RUNTIME:-6} > ${DPUBLK_BENCH_SERVICE_RUNTIME:-5} ? ${DPUBLK_BENCH_RUNTIME:-6} : ${DPUBLK_BENCH_SERVICE_RUNTIME:-5} ))
export DPUBLK_VM_TIMEOUT=${DPUBLK_VM_TIMEOUT:-$(( ${DPUBLK_BENCH_REPS:-3} * 37 * (max_runtime + ${DPUBLK_BENCH_RAMP:-2} + 30) + 900 ))}
vm_opts=(--accelerator --ssds "$nssds" --ssd-size "$sizes" --qemu-nvme "$size" --memory 3G --output "$out")

{
	echo "started=$(date -u +%FT%TZ)"
	echo "reps=${DPUBLK_BENCH_REPS:-3}"
	echo "rows=${DPUBLK_BENCH_ROWS:-all}"
	echo "workloads=${DPUBLK_BENCH_WORKLOADS:-all}"
	echo "size=$size"
	echo "service_size=$svc_size"
	echo "ssds=$nssds"
	echo "ssd_plan=${ssd_groups[*]}"
	echo "dpuemu_args=$DPUBLK_DPUEMU_ARGS"
	echo "vm_timeout=$DPUBLK_VM_TIMEOUT"
	echo "vm_options=${vm_opts[*]}"
	echo "host_cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
	echo "host_cpus=$(nproc)"
	echo "qemu=$(qemu-system-x86_64 --version | head -1)"
	echo "git=${DPUBLK_BENCH_GIT:-unknown}"
	# Other work on the host shares its cores with the VM.
	echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/host.env"

# host_sampler FILE: once a second, the host's clock, the CPU ticks of
# everything on the host (user + nice + system + irq + softirq), the steal
# ticks, the idle + iowait ticks, the 1-minute load average and the QEMU
# process's own ticks. The report places each repetition's window in this
# series by QEMU's ticks (the agent's samples carry them too), and so tells
# how much host CPU other processes took during it: on a shared machine
# that is the first thing to rule out when a repetition is slow.
host_sampler() {
	local qemu= ticks cpu user nice system idle iowait irq softirq steal _
	while :; do
		[ -n "$qemu" ] && [ -e "/proc/$qemu" ] || qemu=$(pgrep -f -n "qemu-system-x86_64.*$out" || true)
		ticks=0
		[ -n "$qemu" ] && ticks=$(awk '{ print $14 + $15 }' "/proc/$qemu/stat" 2>/dev/null || echo 0)
		read -r cpu user nice system idle iowait irq softirq steal _ </proc/stat
		echo "$EPOCHREALTIME $((user + nice + system + irq + softirq)) $steal $((idle + iowait))" \
			"$(cut -d' ' -f1 /proc/loadavg) $ticks"
		sleep 1
	done
}

start=$(date +%s)
log "benchmark run ($size per device, ${DPUBLK_BENCH_REPS:-3} repetitions)"
# The guest's settings travel in a file: vm.sh hands the guest command over
# as one string, which would split values with spaces.
{
	printf 'DPUBLK_BENCH_RUNTIME=%q\n' "${DPUBLK_BENCH_RUNTIME:-6}"
	printf 'DPUBLK_BENCH_SERVICE_RUNTIME=%q\n' "${DPUBLK_BENCH_SERVICE_RUNTIME:-5}"
	printf 'DPUBLK_BENCH_RAMP=%q\n' "${DPUBLK_BENCH_RAMP:-2}"
	printf 'DPUBLK_BENCH_SIZE_MB=%q\n' "$size_mb"
	printf 'DPUBLK_BENCH_SERVICE_SIZE_MB=%q\n' "$svc_mb"
	for g in "${ssd_groups[@]}"; do printf '%s=%q\n' "${g%%=*}" "${g#*=}"; done
	printf 'DPUBLK_BENCH_REPS=%q\n' "${DPUBLK_BENCH_REPS:-3}"
	printf 'DPUBLK_BENCH_ROWS=%q\n' "${DPUBLK_BENCH_ROWS:-}"
	printf 'DPUBLK_BENCH_WORKLOADS=%q\n' "${DPUBLK_BENCH_WORKLOADS:-}"
} >"$out/settings.env"
# The whole console goes to vm.log; progress lines show as they come.
host_sampler >"$out/host-samples" &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
set +e
"$DPUBLK_TOP/scripts/vm.sh" "${vm_opts[@]}" -- scripts/guest/bench.sh 2>&1 |
	tee "$out/vm.log" | grep --line-buffered -E '^\[(bench|dpublk) ' >&2
rc=${PIPESTATUS[0]}
set -e
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
printf 'wall_seconds=%s\nloadavg_end=%s\n' "$(($(date +%s) - start))" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/host.env"
log "VM run took $(($(date +%s) - start)) s"
[ "$rc" = 0 ] || { tail -30 "$out/vm.log" >&2; log "the guest side failed (exit $rc); reporting what was measured"; }
python3 "$DPUBLK_TOP/scripts/bench-report.py" "$out" || exit 1
exit "$rc"
