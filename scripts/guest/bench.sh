#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The benchmark, inside the VM (started by scripts/bench.sh): fio on each
# device of the DEVICES table with each workload of the WORKLOADS table, with
# guest and host CPU sampled around the steady part of every job. Writes
# $DPUBLK_OUTPUT_DIR/<device>/<workload>.json (fio's JSON report) and
# <workload>.cpu (the CPU and I/O counters at both ends of the window); the
# host turns them into tables (scripts/bench-report.py).
#
# Settings (from $DPUBLK_OUTPUT_DIR/settings.env): DPUBLK_BENCH_RUNTIME (measured seconds per job,
# default 10), DPUBLK_BENCH_RAMP (seconds before measuring, default 2),
# DPUBLK_BENCH_DEVICES and DPUBLK_BENCH_WORKLOADS (subsets by label).
set -u
. "$DPUBLK_TOP/selftests/dpublk/test_common.sh"
. "$DPUBLK_TOP/selftests/dpublk/dpublk_disk_common.sh"
out=${DPUBLK_OUTPUT_DIR:?no output directory (run by scripts/bench.sh)}
# shellcheck source=/dev/null # written by scripts/bench.sh
[ -f "$out/settings.env" ] && . "$out/settings.env"
runtime=${DPUBLK_BENCH_RUNTIME:-10}
ramp=${DPUBLK_BENCH_RAMP:-2}
cd /tmp || exit 1

msg() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Each setup function makes its device ready (loaded, bound, written once
# end to end so reads are of data, not of holes) and prints its path.

# Our driver on the accelerator, whose namespace 1 is SSD 0's image passed
# through by dpuemu (--passthrough-ssd 0).
setup_dpublk() {
	ensure_configfs
	load_dpublk_disk >&2
	preload /dev/dpublk0
	echo /dev/dpublk0
}

# QEMU's built-in NVMe controller (vm.sh --qemu-nvme) under the stock nvme
# driver, its image on the same host file system as dpuemu's.
setup_qemu_nvme() {
	local ctrl dev= i
	modprobe nvme 2>/dev/null || true
	for i in $(seq 1 100); do
		for ctrl in /sys/class/nvme/nvme*; do
			[ "$(cat "$ctrl/serial" 2>/dev/null | xargs)" = qemu-nvme ] || continue
			for ns in "$ctrl"/nvme*n1; do [ -e "$ns" ] && dev=/dev/$(basename "$ns"); done
		done
		[ -n "$dev" ] && [ -b "$dev" ] && break
		sleep 0.1
	done
	[ -b "$dev" ] || { msg "no QEMU NVMe namespace (serial qemu-nvme)"; return 1; }
	preload "$dev"
	echo "$dev"
}

# null_blk without memory backing: no data is stored or copied, so this is
# the ceiling of the guest's block layer, fio and io_uring themselves.
# Completions go through a softirq (irqmode=1) as a device interrupt's would;
# one submission queue per vCPU and 512 KiB commands like the NVMe devices.
# Its size (whole GiB) only bounds the random offsets.
setup_null_blk() {
	local dev=/dev/nullb0 i
	modprobe null_blk queue_mode=2 irqmode=1 submit_queues="$(nproc)" hw_queue_depth=64 \
		bs=4096 max_sectors=1024 gb=$(((${DPUBLK_BENCH_SIZE_MB:-1024} + 1023) / 1024)) \
		nr_devices=1 memory_backed=0 >&2 || return 1
	for i in $(seq 1 50); do [ -b $dev ] && break; sleep 0.1; done
	[ -b $dev ] || { msg "no $dev after modprobe null_blk"; return 1; }
	echo $dev
}

# The device table: label, setup function, workloads ("all" or a list of
# workload labels). More rows (RAID6, erasure coding, dm-thin, dm-vdo,
# dm-crypt) go here; vm.sh options they need go into scripts/bench.sh.
DEVICES=(
	"dpublk    setup_dpublk    all"
	"qemu-nvme setup_qemu_nvme all"
	"null_blk  setup_null_blk  all"
)

# The workload table: label, fio rw, block size, iodepth.
WORKLOADS=(
	"randread-4k-qd1   randread  4k   1"
	"randread-4k-qd32  randread  4k   32"
	"randwrite-4k-qd1  randwrite 4k   1"
	"randwrite-4k-qd32 randwrite 4k   32"
	"read-128k-qd8     read      128k 8"
	"write-128k-qd8    write     128k 8"
)

# preload DEV: writes the whole device once (1 MiB sequential writes of
# non-zero data), so every later read is of data that was written.
preload() {
	local dev=$1 start=$SECONDS
	fio --name=preload --filename="$dev" --ioengine=io_uring --direct=1 --rw=write --bs=1M \
		--iodepth=8 --size=100% --refill_buffers=0 --buffer_pattern=0xa5 \
		--output-format=json --output="/tmp/preload.json" >/dev/null 2>&1 ||
		{ msg "preload of $dev failed"; return 1; }
	msg "preloaded $dev ($(($(blockdev --getsize64 "$dev") / 1048576)) MiB) in $((SECONDS - start)) s"
}

# counters DEV: guest CPU jiffies (user nice system idle iowait irq softirq),
# the device's completed reads and writes and sectors read and written, the
# scheduler's run time of all tasks on all CPUs (/proc/schedstat, ns) and the
# wall clock (s); read with builtins only so the sampling itself costs the
# guest next to nothing.
counters() {
	local dev=$1 cpu user nice system idle iowait irq softirq rest stat sched=0 f
	read -r cpu user nice system idle iowait irq softirq rest </proc/stat
	read -r -a stat <"/sys/block/$(basename "$(readlink -f "$dev")")/stat"
	# cpuN lines: name, yld_count, 0, sched_count, sched_goidle, ttwu_count,
	# ttwu_local, rq_cpu_time (ns the CPU ran tasks other than idle), ...
	while read -r -a f; do
		[[ ${f[0]} == cpu[0-9]* ]] && sched=$((sched + f[7]))
	done </proc/schedstat
	echo "$user $nice $system $idle $iowait $irq $softirq ${stat[0]} ${stat[4]} ${stat[2]} ${stat[6]} $sched $EPOCHREALTIME"
}

# sample DEV: guest counters just before and just after the host's sample, so
# the host sample lies between them.
sample() {
	local before host after
	before=$(counters "$1")
	host=$(host_request cpu-sample) || return 1
	after=$(counters "$1")
	printf 'guest_before=%s\nhost=%s\nguest_after=%s\n' "$before" "$host" "$after"
}

# run_job LABEL DEV WORKLOAD...: one fio job. The CPU window opens after the
# ramp and closes while fio is still running, so it covers only steady I/O;
# then fio is stopped (SIGINT: it still writes its report), so fio's numbers
# cover about the same time as the window, however long the host agent took
# to answer.
run_job() {
	local label=$1 dev=$2 name=$3 rw=$4 bs=$5 qd=$6 dir="$out/$1" pid i before now running
	mkdir -p "$dir"
	before=$(counters "$dev" | awk '{ print $8 + $9 }')
	# The runtime is only a safety stop; SIGINT ends the job.
	fio --name="$name" --filename="$dev" --ioengine=io_uring --direct=1 --rw="$rw" --bs="$bs" \
		--iodepth="$qd" --numjobs=1 --time_based=1 --ramp_time="$ramp" --runtime=$((runtime + 120)) \
		--size=100% --norandommap=1 --randrepeat=0 --output-format=json --output="$dir/$name.json" \
		>"$dir/$name.log" 2>&1 &
	pid=$!
	# Under TCG fio takes a while to start: wait for its first I/O.
	for i in $(seq 1 300); do
		now=$(counters "$dev" | awk '{ print $8 + $9 }')
		[ "$now" -gt "$before" ] && break
		kill -0 $pid 2>/dev/null || break
		sleep 0.1
	done
	sleep "$ramp"
	{
		echo "window_start:"
		sample "$dev"
		sleep "$runtime"
		echo "window_end:"
		sample "$dev"
		# fio must still be running when the window closes, or its tail
		# (and fio's exit) would be in it.
		kill -0 $pid 2>/dev/null && echo "fio_running_at_end=1" || echo "fio_running_at_end=0"
	} >"$dir/$name.cpu.tmp" || { kill $pid 2>/dev/null; wait $pid; msg "$label $name: sampling failed"; return 1; }
	mv "$dir/$name.cpu.tmp" "$dir/$name.cpu"
	running=0
	kill -INT $pid 2>/dev/null && running=1
	wait $pid
	[ $running = 1 ] || msg "$label $name: fio ended inside the CPU window"
	# After SIGINT fio exits non-zero; its report tells whether I/O failed.
	if [ "$(sed -n '/^{/,$p' "$dir/$name.json" | jq '.jobs[0].error' 2>/dev/null)" != 0 ]; then
		msg "$label $name: fio failed"
		tail -5 "$dir/$name.log" >&2
		return 1
	fi
	echo "$label $name" >>"$out/index"
	msg "$label $name: $(sed -n '/^{/,$p' "$dir/$name.json" | jq -r '.jobs[0] | "\((.read.iops + .write.iops) | floor) IOPS"')"
}

wanted() { # wanted LABEL LIST: LIST empty or containing LABEL
	[ -z "$2" ] || [[ " $2 " == *" $1 "* ]]
}

{
	echo "kernel=$(uname -r)"
	echo "accel=${DPUBLK_ACCEL_MODE:-}"
	echo "cpus=$(nproc)"
	echo "fio=$(fio --version)"
	echo "runtime=$runtime"
	echo "ramp=$ramp"
	echo "guest_hz=$(getconf CLK_TCK)"
} >"$out/guest.env"

# Every device is set up first; then each workload runs on one device after
# the other, so the rows compared with each other are measured close together
# in time (other work on the host drifts). Rows must therefore coexist, each
# on its own backing.
status=0
ready=()
for row in "${DEVICES[@]}"; do
	read -r label setup workloads <<<"$row"
	wanted "$label" "${DPUBLK_BENCH_DEVICES:-}" || continue
	msg "setting up $label"
	if ! dev=$($setup); then
		msg "$label: setup failed, skipped: $dev"
		status=1
		continue
	fi
	dev_name=$(basename "$(readlink -f "$dev")")
	echo none >"/sys/block/$dev_name/queue/scheduler" 2>/dev/null || true
	echo 1 >"/sys/block/$dev_name/queue/iostats" 2>/dev/null || true
	{
		echo "device=$dev"
		echo "size=$(blockdev --getsize64 "$dev")"
		echo "scheduler=$(cat "/sys/block/$dev_name/queue/scheduler")"
		echo "hw_queues=$(ls "/sys/block/$dev_name/mq" 2>/dev/null | wc -l)"
		echo "max_sectors_kb=$(cat "/sys/block/$dev_name/queue/max_sectors_kb")"
		echo "logical_block_size=$(cat "/sys/block/$dev_name/queue/logical_block_size")"
	} >"$out/$label.env"
	ready+=("$label $dev $workloads")
done
for w in "${WORKLOADS[@]}"; do
	read -r name rw bs qd <<<"$w"
	wanted "$name" "${DPUBLK_BENCH_WORKLOADS:-}" || continue
	for row in "${ready[@]}"; do
		read -r label dev workloads <<<"$row"
		[ "$workloads" = all ] || [[ " ${workloads//,/ } " == *" $name "* ]] || continue
		run_job "$label" "$dev" "$name" "$rw" "$bs" "$qd" || status=1
	done
done
exit $status
