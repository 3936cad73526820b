#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The benchmark, inside the VM (started by scripts/bench.sh): fio on each
# device of the DEVICES table with each workload of the WORKLOADS table,
# DPUBLK_BENCH_REPS times, with guest and host CPU sampled around the steady
# part of every repetition. Writes $DPUBLK_OUTPUT_DIR/<device>/<workload>.r<N>.json
# (fio's JSON report of repetition N), .cpu (the CPU and I/O counters at
# both ends of the window) and .state (the guest's memory, load and new
# kernel log lines before and after it), and appends one line per
# repetition to $DPUBLK_OUTPUT_DIR/index in the order they ran; the host
# turns them into tables (scripts/bench-report.py).
#
# Settings (from $DPUBLK_OUTPUT_DIR/settings.env): DPUBLK_BENCH_RUNTIME (measured seconds per job,
# default 6), DPUBLK_BENCH_SERVICE_RUNTIME (the same for the data-service
# rows, default 5), DPUBLK_BENCH_RAMP (seconds before measuring, default 2),
# DPUBLK_BENCH_REPS (repetitions of every job, default 3),
# DPUBLK_BENCH_SERVICE_SIZE_MB (size of the data-service rows' volumes),
# BENCH_SSDS_<group> (the SSD indices scripts/bench.sh gave each group of
# rows), DPUBLK_BENCH_ROWS and DPUBLK_BENCH_WORKLOADS (subsets by label).
set -u
. "$DPUBLK_TOP/selftests/dpublk/test_common.sh"
. "$DPUBLK_TOP/selftests/dpublk/dpublk_disk_common.sh"
. "$DPUBLK_TOP/selftests/dpublk/configfs_common.sh"
. "$DPUBLK_TOP/selftests/dpublk/nvmf_host_common.sh"
out=${DPUBLK_OUTPUT_DIR:?no output directory (run by scripts/bench.sh)}
# shellcheck source=/dev/null # written by scripts/bench.sh
[ -f "$out/settings.env" ] && . "$out/settings.env"
runtime=${DPUBLK_BENCH_RUNTIME:-6}
svc_runtime=${DPUBLK_BENCH_SERVICE_RUNTIME:-5}
ramp=${DPUBLK_BENCH_RAMP:-2}
reps=${DPUBLK_BENCH_REPS:-3}
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "DPUBLK_BENCH_REPS must be a positive integer, not '$reps'" >&2; exit 1; }
svc_mb=${DPUBLK_BENCH_SERVICE_SIZE_MB:-512}
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

# The data-service rows (issues 6, 7 and 8): dpublk volumes made through
# configfs, each on its own local SSD functions, against the Linux stacks
# that do the same work in the guest (md, dm-thin, dm-vdo, dm-crypt) on
# other SSD functions of the same kind under the stock nvme driver. Every
# volume and stack is $svc_mb MiB.

# ssds GROUP: the SSD indices scripts/bench.sh set aside for GROUP.
ssds() { local v=BENCH_SSDS_$1; echo "${!v:-}"; }

# nvme_disk N: the nvme block device of SSD N.
nvme_disk() {
	local bdf dev
	bdf=$(ssd_pci "$1")
	[ -n "$bdf" ] && dev=$(wait_ssd_blockdev "$bdf") || { msg "SSD $1 has no nvme disk"; return 1; }
	echo "$dev"
}

# dm_disk NAME: /dev/dm-N of a device-mapper device (devtmpfs makes it with
# or without udev).
dm_disk() { echo "/dev/$(dmsetup info -c --noheadings -o blkdevname "$1" | xargs)"; }
dms() { dmsetup --noudevsync "$@" >&2; }

# dpublk_ready: the module loaded (with the passthrough namespace, as for the
# dpublk row) and its configfs tree there.
dpublk_ready() {
	local i
	ensure_configfs
	load_dpublk >&2
	for i in $(seq 1 100); do
		[ -d "$DPUBLK_CFS/volumes" ] && return 0
		sleep 0.1
	done
	msg "no $DPUBLK_CFS/volumes after loading dpublk"
	return 1
}

# dpublk_volume NAME GROUP LAYOUT [attr=value...]: attaches the group's SSDs
# (handles NAME-0, NAME-1, ...) and makes an enabled volume of $svc_mb MiB on
# them; prints its disk.
dpublk_volume() {
	local name=$1 group=$2 layout=$3 i=0 n handles=
	shift 3
	dpublk_ready || return 1
	for n in $(ssds "$group"); do
		attach_ssd "$name-$i" "$n" >&2
		handles+=${handles:+,}$name-$i
		i=$((i + 1))
	done
	[ -n "$handles" ] || { msg "no SSDs for $group (scripts/bench.sh SSD_PLAN)"; return 1; }
	make_volume "$name" "$handles" "$layout" "${svc_mb}M" "$@"
}

# dpublk_stats_space DEV VOLUME: the volume's mapped and stored bytes.
dpublk_space() {
	local v=$DPUBLK_CFS/volumes/$2/stats
	echo "logical_bytes=$(awk '$1 == "logical_bytes" { print $2 }' "$v")"
	echo "physical_bytes=$(awk '$1 == "physical_bytes" { print $2 }' "$v")"
	sed 's/^/volume_stats./; s/ /=/' "$v"
}

# Issue 6: RAID6 over 4 SSDs and 4+2 erasure coding over 6, chunk 64 KiB.
setup_dpublk_raid6() {
	local dev
	dev=$(dpublk_volume r6 raid6 raid6 chunk_size=64K) || { echo "$dev"; return 1; }
	preload "$dev" && echo "$dev"
}
setup_dpublk_ec() {
	local dev
	dev=$(dpublk_volume ec42 ec ec ec_k=4 ec_m=2 chunk_size=64K) || { echo "$dev"; return 1; }
	preload "$dev" && echo "$dev"
}
# md RAID6 over 4 other SSDs under nvme: 64 KiB chunks, no initial resync
# (--assume-clean), each member used for half the volume size so the array
# has the volume's size.
setup_md_raid6() {
	local n devs=() i
	modprobe raid456 >&2 || return 1
	for n in $(ssds md); do devs+=("$(nvme_disk "$n")") || return 1; done
	[ ${#devs[@]} = 4 ] || { msg "md-raid6 needs 4 SSDs, has ${#devs[@]}"; return 1; }
	mdadm --create /dev/md0 --run --quiet --level=6 --raid-devices=4 --chunk=64 --assume-clean \
		--metadata=1.2 --size=$((svc_mb * 1024 / 2)) "${devs[@]}" >&2 || return 1
	for i in $(seq 1 50); do [ -b /dev/md0 ] && break; sleep 0.1; done
	preload /dev/md0 && echo /dev/md0
}

# Issue 7: thin volumes, preloaded, with no snapshot and with 10.
setup_dpublk_thin() {
	local dev
	dev=$(dpublk_volume thin0 thin0 linear thin=1) || { echo "$dev"; return 1; }
	preload "$dev" && echo "$dev"
}
setup_dpublk_thin_snap10() {
	local dev i
	dev=$(dpublk_volume thin10 thin10 linear thin=1) || { echo "$dev"; return 1; }
	preload "$dev" || return 1
	sync
	for i in $(seq 1 10); do mkdir "$DPUBLK_CFS/volumes/thin10/snapshots/s$i" || return 1; done
	msg "10 snapshots of thin10 taken"
	echo "$dev"
}
# dm-thin: one pool on one SSD (64 MiB metadata, the rest data, 64 KiB
# blocks, the smallest dm-thin allows; no zeroing of new blocks) holding both
# thin volumes.
dm_thin_pool() {
	local dev sectors meta=131072
	dmsetup info bench-pool >/dev/null 2>&1 && return 0
	modprobe dm-thin-pool >&2 || return 1
	dev=$(nvme_disk "$(ssds dmthin)") || return 1
	sectors=$(blockdev --getsz "$dev")
	dms create bench-tmeta --table "0 $meta linear $dev 0" || return 1
	dms create bench-tdata --table "0 $((sectors - meta)) linear $dev $meta" || return 1
	dd if=/dev/zero of="$(dm_disk bench-tmeta)" bs=4k count=1 oflag=direct status=none || return 1
	dms create bench-pool --table "0 $((sectors - meta)) thin-pool $(dm_disk bench-tmeta) $(dm_disk bench-tdata) 128 1024 1 skip_block_zeroing"
}
# dm_thin_volume NAME ID: a thin volume of $svc_mb MiB in the pool.
dm_thin_volume() {
	dm_thin_pool || return 1
	dms message bench-pool 0 "create_thin $2" || return 1
	dms create "$1" --table "0 $((svc_mb * 2048)) thin $(dm_disk bench-pool) $2" || return 1
	dm_disk "$1"
}
setup_dm_thin() {
	local dev
	dev=$(dm_thin_volume bench-thin0 0) || return 1
	preload "$dev" && echo "$dev"
}
setup_dm_thin_snap10() {
	local dev i
	dev=$(dm_thin_volume bench-thin10 1) || return 1
	preload "$dev" || return 1
	for i in $(seq 1 10); do
		dms suspend bench-thin10 && dms message bench-pool 0 "create_snap $((100 + i)) 1" &&
			dms resume bench-thin10 || return 1
	done
	msg "10 snapshots of bench-thin10 taken"
	echo "$dev"
}

# Issue 8: dedup + compression, and encryption. dpublk: a thin linear volume
# with zero_detect, dedup and lz4. dm-vdo: formatted by the kernel on its
# first start (the SSD is all zeroes), deduplication and compression on,
# lvm2's default thread counts, 128 MiB slabs, a dense 256 MiB index.
setup_dpublk_reduce() {
	dpublk_volume reduce reduce linear thin=1 zero_detect=1 dedup=1 compression=lz4
}
setup_dm_vdo() {
	local dev blocks i state
	modprobe dm-vdo >&2 || return 1
	dev=$(nvme_disk "$(ssds vdo)") || return 1
	blocks=$(($(blockdev --getsize64 "$dev") / 4096))
	dms create bench-vdo --table "0 $((svc_mb * 2048)) vdo V4 $dev $blocks 4096 32768 16380 ack 1 bio 4 cpu 2 hash 1 logical 1 physical 1 slabSize 32768 deduplication on compression on" ||
		{ dmesg | grep -i vdo | tail -5 >&2; return 1; }
	# The deduplication index comes online in the background.
	for i in $(seq 1 600); do
		state=$(dmsetup status bench-vdo | awk '{ print $7 }')
		[ "$state" = online ] && break
		sleep 0.1
	done
	msg "dm-vdo on $dev: index $state, $(dmsetup status bench-vdo | cut -d' ' -f4-)"
	dm_disk bench-vdo
}
# VDO's own counters: logicalBlocksUsed (mapped) and dataBlocksUsed (stored
# data; vdostats's "space saving" is computed from these two). The packer
# writes out what it holds on a flush.
vdo_space() {
	local stats
	stats=$(dmsetup message bench-vdo 0 stats)
	vdo_stat() { tr ',' '\n' <<<"$stats" | awk -F' : ' -v k="$1" '{ gsub(/^[ {]+/, "", $1) } $1 == k { print $2; exit }'; }
	echo "logical_bytes=$(($(vdo_stat logicalBlocksUsed) * 4096))"
	echo "physical_bytes=$(($(vdo_stat dataBlocksUsed) * 4096))"
	echo "vdo.overhead_bytes=$(($(vdo_stat overheadBlocksUsed) * 4096))"
	echo "vdo.status=$(dmsetup status bench-vdo)"
}
space_dpublk_reduce() { dpublk_space "$1" reduce; }
space_dm_vdo() { vdo_space; }

# dpublk AES-XTS-256 against dm-crypt with the table cryptsetup loads for
# `open --type plain --cipher aes-xts-plain64 --key-size 512 --sector-size
# 4096` (4 KiB crypto sectors like dpublk's blocks), both with a random key.
bench_key() { od -An -v -tx1 -N64 /dev/urandom | tr -d ' \n'; }
setup_dpublk_crypt() {
	local dev
	dev=$(dpublk_volume crypt crypt linear thin=1 encryption=aes-xts-256 key="$(bench_key)") ||
		{ echo "$dev"; return 1; }
	preload "$dev" && echo "$dev"
}
setup_dm_crypt() {
	local dev
	modprobe dm-crypt >&2 || return 1
	dev=$(nvme_disk "$(ssds dmcrypt)") || return 1
	dms create bench-crypt --table "0 $((svc_mb * 2048)) crypt aes-xts-plain64 $(bench_key) 0 $dev 0 1 sector_size:4096" ||
		return 1
	dev=$(dm_disk bench-crypt)
	preload "$dev" && echo "$dev"
}

# NVMe/TCP (issue 17): dpuemu's target against Linux's nvmet-tcp, both
# inside the guest on its loopback (as in test_nvmf_tcp.sh: the guest's
# initiator cannot reach the host), both serving the same image file on a
# tmpfs, reached by the guest's own nvme-tcp initiator. Read workloads only,
# so the two exports of one file never disagree. Both sides of each
# connection run in the guest, emulated by TCG alike, so guest CPU per I/O
# holds initiator and target; the .target files of a repetition add the
# target's own share where it is one process (dpuemu), see
# target_ticks below.
TCP_DIR=/run/dpublk-bench-tcp
TCP_IMAGE=$TCP_DIR/shared.img
TCP_HOSTID=6c0b1f3e-5a43-4d2e-9d67-0000000000c3
TCP_HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$TCP_HOSTID
tcp_mb=${DPUBLK_BENCH_TCP_SIZE_MB:-512}
# tcp_image: the shared image, made and written once end to end (the first
# of the two rows to be set up makes it).
tcp_image() {
	[ -f "$TCP_IMAGE" ] && return 0
	mkdir -p "$TCP_DIR"
	mountpoint -q "$TCP_DIR" || mount -t tmpfs -o size=$((tcp_mb + 64))M tmpfs "$TCP_DIR" >&2 || return 1
	truncate -s "${tcp_mb}M" "$TCP_IMAGE" || return 1
	preload "$TCP_IMAGE" >&2
}
# tcp_connect NQN SERVICE: connects the guest's initiator, prints the disk.
tcp_connect() {
	# nvmf_host_common.sh's helpers take the subsystem and service from
	# NQN and PORT (bash's dynamic scope carries these locals to them).
	local NQN=$1 PORT=$2 dev
	modprobe nvme-tcp >&2 || return 1
	ip link set lo up
	nvmf_connect "$TCP_HOSTNQN" "$TCP_HOSTID" >&2 || { msg "nvme connect to $NQN failed"; return 1; }
	dev=$(nvmf_wait_dev)
	[ -n "$dev" ] || { msg "no disk for $NQN after nvme connect"; return 1; }
	echo "$dev"
}
setup_dpuemu_tcp() {
	local dpuemu=$DPUBLK_TOP/target/release/dpuemu nqn=nqn.2026-12.org.dpublk:bench-dpuemu i
	tcp_image || return 1
	cat >"$TCP_DIR/dpuemu.conf" <<CONF
[port 1]
address 127.0.0.1
service 4430

[subsystem $nqn]
ports 1
host $TCP_HOSTNQN
namespace 1 file $TCP_IMAGE ${tcp_mb}M
CONF
	mkdir -p "$TCP_DIR/sockets"
	local target_pid
	setsid "$dpuemu" --socket-dir "$TCP_DIR/sockets" --nvmf-config "$TCP_DIR/dpuemu.conf" \
		>"$out/dpuemu-tcp.log" 2>&1 </dev/null &
	target_pid=$!
	echo "$target_pid" >"$out/dpuemu-tcp.pid"
	for i in $(seq 1 100); do
		grep -q 'listening on' "$out/dpuemu-tcp.log" && break
		kill -0 "$target_pid" 2>/dev/null || { msg "dpuemu's target exited"; return 1; }
		sleep 0.1
	done
	tcp_connect "$nqn" 4430
}
setup_nvmet_tcp() {
	local nqn=nqn.2026-12.org.dpublk:bench-nvmet sub port=$NVMET/ports/7
	tcp_image || return 1
	ensure_configfs
	modprobe nvmet >&2 && modprobe nvmet-tcp >&2 || return 1
	sub=$NVMET/subsystems/$nqn
	mkdir "$sub" && echo 1 >"$sub/attr_allow_any_host" && mkdir "$sub/namespaces/1" &&
		echo "$TCP_IMAGE" >"$sub/namespaces/1/device_path" && echo 1 >"$sub/namespaces/1/buffered_io" &&
		echo 1 >"$sub/namespaces/1/enable" && mkdir "$port" && echo tcp >"$port/addr_trtype" &&
		echo ipv4 >"$port/addr_adrfam" && echo 127.0.0.1 >"$port/addr_traddr" &&
		echo 4431 >"$port/addr_trsvcid" && ln -s "$sub" "$port/subsystems/$nqn" ||
		{ msg "cannot export $TCP_IMAGE through nvmet"; return 1; }
	tcp_connect "$nqn" 4431
}
NVMET=$CONFIGFS/nvmet

# The device table: label, setup function, workloads ("all" or a list of
# workload labels), and a function printing the device's space accounting
# after each job ("-" for none). The first three rows run
# DPUBLK_BENCH_RUNTIME seconds per job, the data-service rows
# DPUBLK_BENCH_SERVICE_RUNTIME.
DEVICES=(
	"dpublk             setup_dpublk             all -"
	"qemu-nvme          setup_qemu_nvme          all -"
	"null_blk           setup_null_blk           all -"
	"dpublk-raid6       setup_dpublk_raid6       randwrite-4k-qd32,read-128k-qd8,write-128k-qd8 -"
	"dpublk-ec          setup_dpublk_ec          randwrite-4k-qd32,read-128k-qd8,write-128k-qd8 -"
	"md-raid6           setup_md_raid6           randwrite-4k-qd32,read-128k-qd8,write-128k-qd8 -"
	"dpublk-thin        setup_dpublk_thin        randwrite-4k-qd32 -"
	"dpublk-thin-snap10 setup_dpublk_thin_snap10 randwrite-4k-qd32 -"
	"dm-thin            setup_dm_thin            randwrite-4k-qd32 -"
	"dm-thin-snap10     setup_dm_thin_snap10     randwrite-4k-qd32 -"
	"dpublk-reduce      setup_dpublk_reduce      write-128k-qd8-dedup space_dpublk_reduce"
	"dm-vdo             setup_dm_vdo             write-128k-qd8-dedup space_dm_vdo"
	"dpublk-crypt       setup_dpublk_crypt       read-128k-qd8,write-128k-qd8-dedup -"
	"dm-crypt           setup_dm_crypt           read-128k-qd8,write-128k-qd8-dedup -"
	"dpuemu-tcp         setup_dpuemu_tcp         randread-4k-qd32,read-128k-qd8 -"
	"nvmet-tcp          setup_nvmet_tcp          randread-4k-qd32,read-128k-qd8 -"
)
BASE_ROWS=" dpublk qemu-nvme null_blk "

# The workload table: label, fio rw, block size, iodepth, and extra fio
# options (comma-separated, "-" for none). The -dedup write is fio's data for
# data reduction: half of the 128 KiB buffers repeat an earlier one, each
# compresses to about half, every buffer refilled.
WORKLOADS=(
	"randread-4k-qd1      randread  4k   1  -"
	"randread-4k-qd32     randread  4k   32 -"
	"randwrite-4k-qd1     randwrite 4k   1  -"
	"randwrite-4k-qd32    randwrite 4k   32 -"
	"read-128k-qd8        read      128k 8  -"
	"write-128k-qd8       write     128k 8  -"
	"write-128k-qd8-dedup write     128k 8  --dedupe_percentage=50,--buffer_compress_percentage=50,--refill_buffers=1"
)

# preload DEV: writes the whole device once (1 MiB sequential writes of
# non-zero data), so every later read is of data that was written.
preload() {
	local dev=$1 start=$SECONDS
	fio --name=preload --filename="$dev" --ioengine=io_uring --direct=1 --rw=write --bs=1M \
		--iodepth=8 --size=100% --refill_buffers=0 --buffer_pattern=0xa5 \
		--output-format=json --output="/tmp/preload.json" >/dev/null 2>&1 ||
		{ msg "preload of $dev failed"; return 1; }
	local bytes
	# A block device, or an image file (the NVMe/TCP rows' shared image).
	bytes=$(blockdev --getsize64 "$dev" 2>/dev/null || stat -c %s "$dev")
	msg "preloaded $dev ($((bytes / 1048576)) MiB) in $((SECONDS - start)) s"
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

# guest_state: what earlier jobs may have left behind in the guest, one
# key=value per line: memory (free, page cache, dirty and under writeback),
# slab, the load average, the kernel log's length and the disks with
# requests in flight. Read before and after
# every repetition, so a slow one can be traced to the state it started in.
guest_state() {
	awk '$1 ~ /^(MemFree|Cached|Dirty|Writeback|Slab):$/ { sub(":", "", $1); print "mem." $1 "_kb=" $2 }' /proc/meminfo
	echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
	echo "dmesg_lines=$(dmesg | wc -l)"
	# Requests still in flight (reads, writes) on any disk: I/O an earlier
	# row left stuck, which would slow or stall the next one.
	local f r w d
	for f in /sys/block/*/inflight; do
		read -r r w <"$f" || continue
		[ "$r$w" = 00 ] && continue
		d=${f#/sys/block/}
		echo "inflight.${d%/inflight}=$r $w"
	done
}

# target_ticks LABEL: for the dpuemu-tcp row, the CPU its in-guest target
# process has used (utime + stime, clock ticks), as a line of the .cpu file.
target_ticks() {
	local stat pid
	# The setup functions run in a subshell ($(...)): the pid comes back
	# through the file setup_dpuemu_tcp writes.
	[ "$1" = dpuemu-tcp ] && read -r pid <"$out/dpuemu-tcp.pid" 2>/dev/null || return 0
	read -r stat <"/proc/$pid/stat" || return 0
	# Fields after the command name (which may hold spaces): state is the
	# 3rd field, utime the 14th and stime the 15th.
	stat=${stat##*) }
	read -r -a stat <<<"$stat"
	echo "target_ticks=$((stat[11] + stat[12]))"
}

# run_job LABEL DEV WORKLOAD RW BS QD EXTRA SPACE REP: repetition REP of one
# fio job. The CPU window opens after the ramp and closes while fio is still
# running, so it covers only steady I/O; then fio is stopped (SIGINT: it
# still writes its report), so fio's numbers cover about the same time as
# the window, however long the host agent took to answer.
run_job() {
	local label=$1 dev=$2 name=$3 rw=$4 bs=$5 qd=$6 extra=$7 space=$8 rep=$9 dir="$out/$1"
	local pid i before now running base started lines
	local runtime=$runtime opts=()
	[[ $BASE_ROWS == *" $label "* ]] || runtime=$svc_runtime
	[ "$extra" = - ] || IFS=, read -r -a opts <<<"$extra"
	mkdir -p "$dir"
	base=$dir/$name.r$rep
	guest_state | sed 's/^/before./' >"$base.state"
	lines=$(dmesg | wc -l)
	started=$EPOCHREALTIME
	before=$(counters "$dev" | awk '{ print $8 + $9 }')
	# The runtime is only a safety stop; SIGINT ends the job.
	fio --name="$name" --filename="$dev" --ioengine=io_uring --direct=1 --rw="$rw" --bs="$bs" \
		--iodepth="$qd" --numjobs=1 --time_based=1 --ramp_time="$ramp" --runtime=$((runtime + 120)) \
		--size=100% --norandommap=1 --randrepeat=0 "${opts[@]}" --output-format=json \
		--output="$base.json" >"$base.log" 2>&1 &
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
		echo "runtime=$runtime"
		echo "window_start:"
		sample "$dev"
		target_ticks "$label"
		sleep "$runtime"
		echo "window_end:"
		sample "$dev"
		target_ticks "$label"
		# fio must still be running when the window closes, or its tail
		# (and fio's exit) would be in it.
		kill -0 $pid 2>/dev/null && echo "fio_running_at_end=1" || echo "fio_running_at_end=0"
	} >"$base.cpu.tmp" || {
		kill $pid 2>/dev/null
		wait $pid
		msg "$label $name #$rep: sampling failed"
		echo "$label $name $rep $started sampling-failed" >>"$out/index"
		return 1
	}
	mv "$base.cpu.tmp" "$base.cpu"
	running=0
	kill -INT $pid 2>/dev/null && running=1
	wait $pid
	[ $running = 1 ] || msg "$label $name #$rep: fio ended inside the CPU window"
	{
		guest_state | sed 's/^/after./'
		# Kernel messages that appeared during the job (a timeout, a hung
		# task, a reset) explain a slow repetition.
		dmesg | tail -n +$((lines + 1)) | sed 's/^/dmesg=/'
	} >>"$base.state"
	# After SIGINT fio exits non-zero; its report tells whether I/O failed.
	if [ "$(sed -n '/^{/,$p' "$base.json" | jq '.jobs[0].error' 2>/dev/null)" != 0 ]; then
		msg "$label $name #$rep: fio failed"
		tail -5 "$base.log" >&2
		echo "$label $name $rep $started fio-failed" >>"$out/index"
		return 1
	fi
	if [ "$space" != - ]; then
		# What the job left stored: flushed first, so nothing waits in a
		# cache or a packer.
		python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.fsync(fd)' "$dev"
		$space "$dev" >"$base.space" || msg "$label $name #$rep: no space figures"
	fi
	# The index is the run order, failed repetitions included: the report
	# lists, for every repetition, the jobs that ran before it in this VM.
	echo "$label $name $rep $started ok" >>"$out/index"
	msg "$label $name #$rep: $(sed -n '/^{/,$p' "$base.json" | jq -r '.jobs[0] | "\((.read.iops + .write.iops) | floor) IOPS"')"
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
	echo "service_runtime=$svc_runtime"
	echo "service_size_mb=$svc_mb"
	echo "ramp=$ramp"
	echo "reps=$reps"
	echo "guest_start=$EPOCHREALTIME"
	echo "guest_hz=$(getconf CLK_TCK)"
} >"$out/guest.env"

# Every device is set up first; then each workload runs on one device after
# the other, so the rows compared with each other are measured close together
# in time (other work on the host drifts). Rows must therefore coexist, each
# on its own backing.
status=0
ready=()
for row in "${DEVICES[@]}"; do
	read -r label setup workloads space <<<"$row"
	wanted "$label" "${DPUBLK_BENCH_ROWS:-}" || continue
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
	ready+=("$label $dev $workloads $space")
done
# The guest's CPU with every device set up and no fio running, over one
# service window: what every window holds besides its job (kernel threads of
# the stacks, the sampling itself). The report shows it beside the table.
if [ ${#ready[@]} -gt 0 ]; then
	read -r _ idle_dev _ <<<"${ready[0]}"
	{
		echo "window_start:"
		sample "$idle_dev"
		sleep "$svc_runtime"
		echo "window_end:"
		sample "$idle_dev"
	} >"$out/idle.cpu" || rm -f "$out/idle.cpu"
fi
# Each workload runs REPS rounds, and every round runs it on each device in
# turn: a change on the host (other work, page cache) hits all devices of a
# round alike instead of all repetitions of one device.
for w in "${WORKLOADS[@]}"; do
	read -r name rw bs qd extra <<<"$w"
	wanted "$name" "${DPUBLK_BENCH_WORKLOADS:-}" || continue
	for rep in $(seq 1 "$reps"); do
		for row in "${ready[@]}"; do
			read -r label dev workloads space <<<"$row"
			# "all" means the six plain workloads; the -dedup one only where named.
			if [ "$workloads" = all ]; then [ "$extra" = - ] || continue
			else [[ " ${workloads//,/ } " == *" $name "* ]] || continue; fi
			run_job "$label" "$dev" "$name" "$rw" "$bs" "$qd" "$extra" "$space" "$rep" || status=1
		done
	done
done
echo "guest_end=$EPOCHREALTIME" >>"$out/guest.env"
exit $status
