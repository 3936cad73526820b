#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# One VM boot of the power-loss campaign (scripts/crash-campaign.sh), run in
# the guest. dpuemu runs with --power-loss-sim, so writes no completed flush
# covers live in a volatile cache that the power cut tears.
#
#   PL_CHECK=K  kill point K's volume is back after its power cut: adopt it,
#               check it against K's write log (powerloss check), record the
#               result, destroy the volume.
#   PL_RUN=K    make kill point K's volume (layout PL_LAYOUT) and run the
#               workload (powerloss write, seed PL_SEED); after PL_KILL_MS it
#               asks the host agent to cut dpuemu's power, and QEMU's
#               vfio-user client takes the VM down with it.
#
# Layouts: linear, raid10, raid6, ec, thin-snap, reduced, encrypted (dpublk
# volumes), and nvme: the last SSD's own function under the stock nvme
# driver. Both may be given (check K - 1, then run K). PL_TOOL is the powerloss
# binary, PL_SSDS the number of SSDs. Everything a later boot or the host
# needs goes to $DPUBLK_IMAGES_DIR/kp-K/ (meta, log, snapshots, check.out,
# result), which is on the host and survives the VM.
. "$(dirname "$0")/../test_common.sh"
. "$(dirname "$0")/../dpublk_disk_common.sh"
. "$(dirname "$0")/../configfs_common.sh"

STATE=${DPUBLK_IMAGES_DIR:?run by scripts/crash-campaign.sh}
V=$DPUBLK_CFS/volumes
KEY=$(printf '5%.0s' $(seq 1 64))$(printf 'a%.0s' $(seq 1 64))
VOLUME_SIZE=64M
phase_kp=

# result KP STATUS FIELDS...: the one line the host turns into KTAP.
result() {
	local kp=$1
	shift
	[ -f "$STATE/kp-$kp/result" ] && return 0
	echo "$*" >"$STATE/kp-$kp/result.tmp" && mv "$STATE/kp-$kp/result.tmp" "$STATE/kp-$kp/result"
}

# Failures end the boot; the kill point being handled records why.
fail() {
	diag "FAIL: $*"
	dmesg | grep -iE 'dpublk|nvme' | tail -15 | sed 's/^/#   dmesg: /'
	[ -n "$phase_kp" ] && result "$phase_kp" "status=fail reason=$(echo "$*" | tr ' ' '_')"
	exit $KSFT_FAIL
}

# attach_all [SKIP]: hands every SSD but SKIP to the accelerator (adopting
# the ones it owns already).
attach_all() {
	local i dir bdf
	for i in $(seq 0 $((PL_SSDS - 1))); do
		[ "$i" = "${1:-}" ] && continue
		dir=$DPUBLK_CFS/ssds/p$i
		[ -d "$dir" ] || mkdir "$dir" || fail "mkdir ssds/p$i"
		bdf=$(ssd_pci "$i")
		[ -n "$bdf" ] || fail "no SSD $i"
		[ "$(cat "$dir/device")" = "$bdf" ] || cfs_write "$dir/device" "$bdf"
		[ "$(cat "$dir/state")" = attached ] || cfs_write "$dir/attach" 1
	done
}

# The last SSD under the stock nvme driver: layout 'nvme' tests dpuemu's
# own SSD function (Flush and FUA straight to the volatile cache), as the
# old crash test did.
NVME_SSD=$((${PL_SSDS:-6} - 1))
nvme_ssd_device() {
	local bdf dir=$DPUBLK_CFS/ssds/p$NVME_SSD
	bdf=$(ssd_pci "$NVME_SSD")
	if [ -d "$dir" ] && [ "$(cat "$dir/state")" = attached ]; then
		cfs_write "$dir/attach" 0
	fi
	wait_ssd_blockdev "$bdf" || fail "SSD $NVME_SSD has no nvme disk (driver: $(ssd_driver "$bdf"))"
}

# The volume of each layout, on the SSD handles p0..p5.
make_layout_volume() { # make_layout_volume NAME LAYOUT
	local name=$1
	case $2 in
	nvme) nvme_ssd_device ;;
	linear) make_volume "$name" p0 linear $VOLUME_SIZE ;;
	raid10) make_volume "$name" p0,p1 raid10 $VOLUME_SIZE copies=2 ;;
	raid6) make_volume "$name" p0,p1,p2,p3 raid6 $VOLUME_SIZE ;;
	ec) make_volume "$name" p0,p1,p2,p3,p4,p5 ec $VOLUME_SIZE ec_k=4 ec_m=2 ;;
	thin-snap) make_volume "$name" p0,p1 stripe $VOLUME_SIZE ;;
	reduced) make_volume "$name" p0 linear $VOLUME_SIZE dedup=1 compression=lz4 ;;
	encrypted) make_volume "$name" p1,p2 raid10 $VOLUME_SIZE encryption=aes-xts-256 key="$KEY" ;;
	*) fail "unknown layout '$2'" ;;
	esac
}

# destroy_kp_volume K: adopts kill point K's volume if the accelerator still
# has it, and destroys it with its snapshots.
destroy_kp_volume() {
	local k=$1 v=$V/pl$1 snap
	grep -q '^layout=nvme$' "$STATE/kp-$k/meta" 2>/dev/null && return 0
	[ -d "$v" ] || mkdir "$v" || fail "mkdir volumes/pl$k"
	if [ "$(cat "$v/state")" = absent ]; then
		rmdir "$v" || fail "rmdir volumes/pl$k"
		return 0
	fi
	# A snapshot whose creation the cut interrupted may or may not exist;
	# mkdir adopts it or makes it, and either way it goes.
	for snap in $(cat "$STATE/kp-$k/snapshots" 2>/dev/null); do
		[ -d "$v/snapshots/$snap" ] || mkdir "$v/snapshots/$snap" || fail "mkdir pl$k/snapshots/$snap"
		cfs_write "$v/snapshots/$snap/destroy" 1
		rmdir "$v/snapshots/$snap" || fail "rmdir pl$k/snapshots/$snap"
	done
	[ "$(cat "$v/enable")" = 0 ] || cfs_write "$v/enable" 0
	cfs_write "$v/destroy" 1
	rmdir "$v" || fail "rmdir volumes/pl$k"
}

check_kill_point() {
	local k=$1 d=$STATE/kp-$1 v=$V/pl$1 layout seed dev rc summary reason bad
	phase_kp=$k
	[ -f "$d/meta" ] || fail "kill point $k has no meta file (its run never started)"
	# A run that failed before the cut has its result already.
	[ -f "$d/result" ] && { diag "kill point $k: $(cat "$d/result")"; return 0; }
	layout=$(sed -n 's/^layout=//p' "$d/meta")
	seed=$(sed -n 's/^seed=//p' "$d/meta")
	if [ "$layout" = nvme ]; then
		dev=$(nvme_ssd_device) || fail "no nvme disk for SSD $NVME_SSD"
	else
		mkdir "$v" || fail "mkdir volumes/pl$k (adopt)"
		[ "$(cat "$v/state")" != absent ] || fail "volume pl$k ($layout) is gone after the power cut"
		if [ "$(cat "$v/state")" = locked ]; then
			cfs_write "$v/key" "$KEY"
			cfs_write "$v/enable" 1
		fi
		[ "$(cat "$v/enable")" = 1 ] || fail "pl$k ($layout) not exposed after the restart (state $(cat "$v/state"))"
		dev=/dev/$(cat "$v/device")
		for _ in $(seq 1 50); do [ -b "$dev" ] && break; sleep 0.1; done
		[ -b "$dev" ] || fail "$dev missing"
	fi
	rc=0
	"$PL_TOOL" check "$dev" "$d/log" "$seed" >"$d/check.out" 2>&1 || rc=$?
	sed 's/^/# check: /' "$d/check.out" | head -40
	summary=$(sed -n 's/^summary //p' "$d/check.out")
	if [ "$rc" = 0 ] && [ -n "$summary" ]; then
		result "$k" "status=ok layout=$layout $summary"
	else
		reason=$(grep -m1 '^FAIL' "$d/check.out" || tail -1 "$d/check.out")
		result "$k" "status=fail layout=$layout $summary reason=$(echo "$reason" | tr ' ' '_')"
	fi
	bad=$(dmesg | grep -E 'WARNING:|BUG:|Oops|general protection|kernel BUG|Call Trace:|refcount_t:|UBSAN:|KASAN:' | head -1 || true)
	if [ -n "$bad" ]; then
		rm -f "$d/result"
		fail "the kernel reported a problem while checking: $bad"
	fi
	destroy_kp_volume "$k"
	phase_kp=
}

run_kill_point() {
	local k=$1 d=$STATE/kp-$1 dev d2 name snaps=
	phase_kp=$k
	mkdir -p "$d"
	printf 'layout=%s\nseed=%s\nkill_ms=%s\n' "$PL_LAYOUT" "$PL_SEED" "$PL_KILL_MS" >"$d/meta"
	# Volumes of earlier kill points whose check never ran (a failed boot).
	for d2 in "$STATE"/kp-*; do
		name=${d2##*/kp-}
		[ "$name" = "$k" ] || destroy_kp_volume "$name"
	done
	dev=$(make_layout_volume "pl$k" "$PL_LAYOUT") || fail "making the $PL_LAYOUT volume failed"
	diag "kill point $k: $PL_LAYOUT volume $dev, seed $PL_SEED, power cut after $PL_KILL_MS ms"
	if [ "$PL_LAYOUT" = thin-snap ]; then
		# Snapshots while the workload writes; each name is logged before
		# its mkdir, so the next boot finds every one that may exist.
		(
			i=0
			while sleep 0.7; do
				echo "s$i" >>"$d/snapshots"
				mkdir "$V/pl$k/snapshots/s$i" || exit 1
				i=$((i + 1))
			done
		) &
		snaps=$!
	fi
	local rc=0 answer=$DPUBLK_RUNDIR/ctl/powerloss-cut.done span=()
	# The raw SSD held earlier volumes: the workload zeroes its span first.
	[ "$PL_LAYOUT" = nvme ] && span=(--span $((64 << 20)) --zero-first 1)
	"$PL_TOOL" write "$dev" "$d/log" "$PL_SEED" --threads 4 --kill-after-ms "$PL_KILL_MS" \
		--ctl "$DPUBLK_RUNDIR/ctl" --max-seconds 10 "${span[@]}" || rc=$?
	[ -n "$snaps" ] && kill "$snaps" 2>/dev/null
	# Here only when QEMU outlived its vfio-user server. The cut happened
	# if the host agent says so; the next boot checks it as usual.
	for _ in $(seq 1 100); do [ -e "$answer" ] && break; sleep 0.1; done
	[ "$(head -1 "$answer" 2>/dev/null)" = ok ] ||
		fail "no power cut: powerloss write exited $rc, host agent: $(cat "$answer" 2>/dev/null || echo no answer)"
	diag "kill point $k: power cut done; the VM outlived it (QEMU did not abort)"
	phase_kp=
}

[ -x "${PL_TOOL:-}" ] || { echo "# PL_TOOL not built: ${PL_TOOL:-unset}"; exit 1; }
PL_SSDS=${PL_SSDS:-6}
accelerator_pci >/dev/null || { [ -n "${PL_RUN:-}" ] && phase_kp=$PL_RUN; fail "no accelerator function"; }
unload_dpublk
ensure_configfs
load_dpublk
for _ in $(seq 1 100); do
	[ -d "$V" ] && [ -d "$DPUBLK_CFS/ssds" ] && break
	sleep 0.1
done
[ -d "$V" ] || fail "no volumes/ in configfs"
# The nvme layout's SSD stays with nvme until its check is done.
if [ -n "${PL_CHECK:-}" ] && grep -q '^layout=nvme$' "$STATE/kp-$PL_CHECK/meta" 2>/dev/null; then
	attach_all "$NVME_SSD"
else
	attach_all
fi
[ -n "${PL_CHECK:-}" ] && check_kill_point "$PL_CHECK"
if [ -n "${PL_RUN:-}" ]; then
	attach_all
	run_kill_point "$PL_RUN"
fi
exit $KSFT_PASS
