#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The power-loss campaign: N power cuts at random (seeded) times while a
# workload writes to dpublk volumes, each checked after a restart over the
# same SSD images (Documentation/testing.rst, "Power-loss campaign").
#
#   crash-campaign.sh [--kill-points N] [--seed S] [--layouts L,L,...] [--keep]
#     --kill-points N  power cuts (default 3); the campaign boots N + 1 VMs
#     --seed S         campaign seed (default: from the clock; printed, so a
#                      run can be repeated)
#     --layouts LIST   layouts to cycle through (default
#                      linear,raid10,raid6,ec,thin-snap,reduced,encrypted,nvme;
#                      nvme is an SSD's own function under the stock nvme
#                      driver); the seed picks where the cycle starts, so
#                      short campaigns cover different layouts
#     --keep           keep the images and logs (printed path); kept anyway
#                      when a kill point fails
#
# dpuemu runs with --power-loss-sim, so writes no completed flush covers sit
# in a volatile cache. Boot b checks kill point b - 1 and then runs kill
# point b: selftests/dpublk/powerloss/boot.sh makes the volume, the workload
# (selftests/dpublk/powerloss/powerloss.c) writes and logs, asks the host
# agent for 'dpuemu-crash' (SIGUSR2: the cache is torn, dpuemu exits), and
# QEMU's vfio-user client takes the VM down. Prints KTAP, one line per kill
# point, and a totals line; exits non-zero when any kill point failed.
. "$(dirname "$0")/lib.sh"

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/crash-campaign.sh" "$@"
	exit
fi

kill_points=3 seed= layouts=linear,raid10,raid6,ec,thin-snap,reduced,encrypted,nvme keep=0
while [ $# -gt 0 ]; do
	case $1 in
	--kill-points) kill_points=$2; shift ;;
	--seed) seed=$2; shift ;;
	--layouts) layouts=$2; shift ;;
	--keep) keep=1 ;;
	*) die "crash-campaign.sh: unknown option $1 (see the header of this script)" ;;
	esac
	shift
done
[[ $kill_points =~ ^[1-9][0-9]*$ ]] || die "--kill-points must be a positive number"
[ -n "$seed" ] || seed=$(($(date +%s%N) % 1000000007))
[[ $seed =~ ^[0-9]+$ ]] && [ ${#seed} -le 18 ] || die "--seed must be a number of at most 18 digits"
IFS=, read -r -a layout_list <<<"$layouts"
for l in "${layout_list[@]}"; do
	case $l in
	linear | raid10 | raid6 | ec | thin-snap | reduced | encrypted | nvme) ;;
	*) die "unknown layout '$l'" ;;
	esac
done

# From here on a failing command is a result to report, not a reason to stop.
set +e
ssds=6 ssd_size=256M
tool=$DPUBLK_TOP/build/powerloss/powerloss
mkdir -p "$(dirname "$tool")"
gcc -O2 -Wall -Wextra -Werror -pthread -o "$tool" "$DPUBLK_TOP/selftests/dpublk/powerloss/powerloss.c" ||
	die "building the powerloss tool failed"

mkdir -p "$DPUBLK_CACHE/run"
images=$(mktemp -d "$DPUBLK_CACHE/run/powerloss.XXXXXX") || die "no scratch directory"
# Cleared only when every kill point passed: an interrupted campaign keeps
# its images for a look.
failed=1
finish() {
	if [ "$keep" = 1 ] || [ "$failed" != 0 ]; then
		log "images and logs kept in $images"
	else
		rm -rf "$images"
	fi
}
trap finish EXIT

# mix N...: a 62-bit hash of numbers, for per-kill-point seeds and times.
mix() {
	local h=1469598103934665603 n
	for n in "$@"; do
		h=$(((h ^ n) * 1099511628211))
		h=$(((h ^ (h >> 29)) * 6364136223846793005))
	done
	echo $(((h ^ (h >> 32)) & 0x3fffffffffffffff))
}

layout_of() { echo "${layout_list[$((($1 + seed) % ${#layout_list[@]}))]}"; }

echo "TAP version 13"
echo "1..$kill_points"
echo "# power-loss campaign: seed $seed, $kill_points kill points, layouts $layouts, $ssds SSDs of $ssd_size"
echo "# images: $images (rerun with --seed $seed)"
pass=0 fail=0
declare -A run_time

# report K CHECK_BOOT_SECONDS: the KTAP line of kill point K.
report() {
	local k=$1 took=$2 d=$images/kp-$1 res status line cut
	local n=$((k + 1)) layout=$(layout_of "$k")
	res=$(cat "$d/result" 2>/dev/null || true)
	status=$(sed -n 's/.*status=\([a-z]*\).*/\1/p' <<<"$res")
	field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$res"; }
	cut=$(sed -n 's/.*power cut: \([0-9]*\) unflushed sectors reached the images, \([0-9]*\) lost.*/\1 kept, \2 lost/p' \
		"$d/powercut.log" 2>/dev/null | tail -1)
	line="kp$k layout=$layout kill=$(sed -n 's/^kill_ms=//p' "$d/meta" 2>/dev/null)ms"
	line+=" writes=$(field writes) flushed_checked=$(field verified)/$(field flushed) sectors=$(field sectors)"
	line+=" cut=[${cut:-none}] time=${run_time[$k]:-?}s+${took}s"
	if [ "$status" = ok ] && [ -n "$cut" ]; then
		echo "ok $n $line"
		pass=$((pass + 1))
		return
	fi
	fail=$((fail + 1))
	if [ -z "$res" ]; then
		echo "not ok $n $line # no result: the check boot did not finish"
	elif [ -z "$cut" ]; then
		echo "not ok $n $line # dpuemu logged no power cut (was it cut, or killed otherwise?)"
	else
		echo "not ok $n $line # $(field reason | tr '_' ' ')"
	fi
	grep -h '^BAD\|^FAIL' "$d/check.out" 2>/dev/null | head -20 | sed 's/^/# /'
	for b in $k $((k + 1)); do
		[ -f "$images/boot-$b.out" ] && grep -E '^# .*(FAIL|dmesg)' "$images/boot-$b.out" | head -20 | sed "s/^/# boot $b: /"
	done
	return 0
}

for boot in $(seq 0 "$kill_points"); do
	check= run= layout= wseed= kill_ms=
	[ "$boot" -gt 0 ] && check=$((boot - 1))
	if [ "$boot" -lt "$kill_points" ]; then
		run=$boot
		layout=$(layout_of "$boot")
		wseed=$(mix "$seed" "$boot" 1)
		kill_ms=$((1500 + $(mix "$seed" "$boot" 2) % 4500))
	fi
	dseed=$(mix "$seed" "$boot" 3)
	dpuemu_args="--power-loss-sim $dseed"
	if [ -n "$run" ]; then
		mkdir -p "$images/kp-$run"
		# dpuemu writes its tear report itself: the run directory and its
		# log go with the VM.
		dpuemu_args+=" --power-loss-report $images/kp-$run/powercut.log"
	fi
	log "power-loss boot $boot/$kill_points:${check:+ check kill point $check;}${run:+ run kill point $run ($layout, cut after $kill_ms ms)}"
	start=$(date +%s)
	# vm.sh bounds the VM run (not its wait for the VM lock).
	DPUBLK_DPUEMU_ARGS="$dpuemu_args" DPUBLK_VM_TIMEOUT=${DPUBLK_VM_TIMEOUT:-600} \
		"$DPUBLK_TOP/scripts/vm.sh" --accelerator --ssds $ssds --ssd-size $ssd_size --images "$images" -- \
		env PL_TOOL="$tool" PL_SSDS=$ssds PL_CHECK="$check" PL_RUN="$run" PL_LAYOUT="$layout" \
		PL_SEED="$wseed" PL_KILL_MS="$kill_ms" selftests/dpublk/powerloss/boot.sh \
		2>&1 >"$images/boot-$boot.out" | cat >"$images/boot-$boot.err"
	# stderr goes through a pipe: vng reopens /dev/stderr, which would
	# truncate a file and lose vm.sh's own lines.
	rc=${PIPESTATUS[0]}
	# The boot's own time, without the wait for the VM lock.
	booted=$(sed -n 's/^\[dpublk \([0-9:]*\)\] booting VM.*/\1/p' "$images/boot-$boot.err" | tail -1)
	if [ -n "$booted" ]; then
		took=$((($(date +%s) - $(date -d "$booted" +%s) + 86400) % 86400))
	else
		took=$(($(date +%s) - start))
	fi
	[ -n "$run" ] && run_time[$run]=$took
	[ -n "$check" ] && report "$check" "$took"
	# A boot that neither ran its kill point nor died by the cut is a
	# failure of that kill point (reported with it after the next boot).
	if [ -n "$run" ] && [ ! -f "$images/kp-$run/meta" ]; then
		log "boot $boot did not start kill point $run (vm.sh exit $rc); tail of its output:"
		tail -20 "$images/boot-$boot.out" "$images/boot-$boot.err" >&2
	fi
done
echo "# Totals: pass:$pass fail:$fail xfail:0 xpass:0 skip:0 error:0"
[ "$fail" = 0 ] && failed=0
[ "$fail" = 0 ]
