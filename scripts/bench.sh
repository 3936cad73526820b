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
#   DPUBLK_BENCH_RUNTIME   measured seconds per job (default 10)
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
mkdir -p "$out"
size_mb=$(($(numfmt --from=iec "$size") / 1048576))

# The hardware of the device table's rows: the accelerator with one SSD
# whose image namespace 1 passes through (dpublk), and QEMU's NVMe
# controller with an image of the same size in the same run directory.
export DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0"
vm_opts=(--accelerator --ssds 1 --ssd-size "$size" --qemu-nvme "$size" --output "$out")

{
	echo "started=$(date -u +%FT%TZ)"
	echo "size=$size"
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
	printf 'DPUBLK_BENCH_RAMP=%q\n' "${DPUBLK_BENCH_RAMP:-2}"
	printf 'DPUBLK_BENCH_SIZE_MB=%q\n' "$size_mb"
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
