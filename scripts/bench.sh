#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `make bench`: fio in one VM run on a dpublk disk, QEMU's own NVMe
# controller and null_blk, with guest and host CPU per I/O; see
# Documentation/benchmarks.rst. Prints a markdown table and where the full
# results (fio's JSON and the derived numbers) went.
#
# Environment:
#   DPUBLK_BENCH_DIR       results go to DIR/<timestamp>/ (default
#                          $DPUBLK_CACHE/bench)
#   DPUBLK_BENCH_SIZE      size of each tested device (default 1G)
#   DPUBLK_BENCH_SERVICE_SIZE
#                          size of the data-service rows' volumes (RAID6,
#                          EC, thin, dedup, encryption; default 512M)
#   DPUBLK_BENCH_RUNTIME   measured seconds per job (default 10)
#   DPUBLK_BENCH_SERVICE_RUNTIME
#                          the same for the data-service rows (default 8)
#   DPUBLK_BENCH_RAMP      seconds of each job before measuring (default 2)
#   DPUBLK_BENCH_DEVICES, DPUBLK_BENCH_WORKLOADS
#                          space-separated subsets of the tables in
#                          scripts/guest/bench.sh (default: all)
. "$(dirname "$0")/lib.sh"

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
	DPUBLK_BENCH_STAMP=$stamp DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/bench.sh" "$@"
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

# The local SSDs, in index order: group (the rows of scripts/guest/bench.sh
# that use it), how many, size in MiB of each. SSD 0 is the dpublk row's
# (namespace 1 passes its image through); every other group belongs to one
# data-service row, dpublk's on SSDs it attaches through configfs, the Linux
# stacks' on SSDs left to the nvme driver. Sizes leave room for each row's
# volume of svc_mb: RAID6 over 4 and EC 4+2 over 6 store it with their
# parity, md uses half of each member, a thin volume with snapshots gets its
# copies-on-write, dm-thin's pool holds two volumes and 64 MiB of metadata,
# dm-vdo's ~3 GiB of index and metadata. The images are sparse: only what is
# written takes host memory.
SSD_PLAN=(
	"passthrough 1 $size_mb"
	"raid6       4 $svc_mb"
	"ec          6 $svc_mb"
	"md          4 $svc_mb"
	"thin0       1 $((svc_mb * 2))"
	"thin10      1 $((svc_mb * 3))"
	"dmthin      1 $((svc_mb * 4 + 64))"
	"reduce      1 $((svc_mb * 2))"
	"vdo         1 $((4096 + svc_mb))"
	"crypt       1 $((svc_mb * 2))"
	"dmcrypt     1 $svc_mb"
)
nssds=0 sizes= ssd_groups=()
for g in "${SSD_PLAN[@]}"; do
	read -r group count mb <<<"$g"
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
export DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0"
vm_opts=(--accelerator --ssds "$nssds" --ssd-size "$sizes" --qemu-nvme "$size" --memory 3G --output "$out")

{
	echo "started=$(date -u +%FT%TZ)"
	echo "size=$size"
	echo "service_size=$svc_size"
	echo "ssds=$nssds"
	echo "ssd_plan=${ssd_groups[*]}"
	echo "dpuemu_args=$DPUBLK_DPUEMU_ARGS"
	echo "vm_options=${vm_opts[*]}"
	echo "host_cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
	echo "host_cpus=$(nproc)"
	echo "qemu=$(qemu-system-x86_64 --version | head -1)"
	echo "git=${DPUBLK_BENCH_GIT:-unknown}"
	# Other work on the host shares its cores with the VM.
	echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/host.env"

start=$(date +%s)
log "benchmark run ($size per device)"
# The guest's settings travel in a file: vm.sh hands the guest command over
# as one string, which would split values with spaces.
{
	printf 'DPUBLK_BENCH_RUNTIME=%q\n' "${DPUBLK_BENCH_RUNTIME:-10}"
	printf 'DPUBLK_BENCH_SERVICE_RUNTIME=%q\n' "${DPUBLK_BENCH_SERVICE_RUNTIME:-8}"
	printf 'DPUBLK_BENCH_RAMP=%q\n' "${DPUBLK_BENCH_RAMP:-2}"
	printf 'DPUBLK_BENCH_SIZE_MB=%q\n' "$size_mb"
	printf 'DPUBLK_BENCH_SERVICE_SIZE_MB=%q\n' "$svc_mb"
	for g in "${ssd_groups[@]}"; do printf '%s=%q\n' "${g%%=*}" "${g#*=}"; done
	printf 'DPUBLK_BENCH_DEVICES=%q\n' "${DPUBLK_BENCH_DEVICES:-}"
	printf 'DPUBLK_BENCH_WORKLOADS=%q\n' "${DPUBLK_BENCH_WORKLOADS:-}"
} >"$out/settings.env"
# The whole console goes to vm.log; progress lines show as they come.
set +e
"$DPUBLK_TOP/scripts/vm.sh" "${vm_opts[@]}" -- scripts/guest/bench.sh 2>&1 |
	tee "$out/vm.log" | grep --line-buffered -E '^\[(bench|dpublk) ' >&2
rc=${PIPESTATUS[0]}
set -e
printf 'wall_seconds=%s\nloadavg_end=%s\n' "$(($(date +%s) - start))" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/host.env"
log "VM run took $(($(date +%s) - start)) s"
[ "$rc" = 0 ] || { tail -30 "$out/vm.log" >&2; log "the guest side failed (exit $rc); reporting what was measured"; }
python3 "$DPUBLK_TOP/scripts/bench-report.py" "$out" || exit 1
exit "$rc"
