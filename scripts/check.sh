#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `make check` (what CI runs) and `make check-full` (every test). Userspace
# first (the harness's own tests, cargo fmt), then the builds the VM tests
# use, then the kselftests inside the VM (without and with the accelerator,
# with and without a vIOMMU as the suites require): a sample of them for
# make check, all for check-full. Clippy, the cargo tests and the NVMe/TCP
# fuzz sample run beside the VM suites and are printed after them.
# Ends with 'N passed, N failed, N skipped'; exits non-zero on any failure.
#
# Nothing passes by accident (Documentation/testing.rst):
# - each VM suite is judged by scripts/ktap-verdict.sh: its plan must match
#   the tests asked for, every test must report, and a skip fails the run
#   unless selftests/dpublk/skips-allowed lists it with a reason;
# - a failed build of something later tests use is a failure, and the tests
#   that needed it are not run on a stale binary but counted as failed;
# - every VM run has a hard time limit (DPUBLK_VM_TIMEOUT in scripts/vm.sh,
#   set per suite here), and the whole check one of DPUBLK_CHECK_TIMEOUT
#   (.ci/run sets it): a hang fails its suite and the run goes on.
#
#   DPUBLK_CHECK_LEVEL=sample|full  the VM suites' sample (make check, CI:
#                                   one boot per kind of hardware, about 10
#                                   minutes warm) or every test (make
#                                   check-full, about 47 minutes)
#   DPUBLK_CHECK_SUITES="host vm"   which parts to run (default: all)
#   DPUBLK_CHECK_ONLY="suite ..."   only these VM suites (default: all)
#   DPUBLK_TIME_FACTOR=N            every time limit N times longer (default 1)
. "$(dirname "$0")/lib.sh"
set +e

cd "$DPUBLK_TOP"
passed=0 failed=0 skipped=0
# Every log of the run (KTAP, VM stderr, cargo) stays in the cache, the
# last ten runs of it, so a failure seen only in CI's summary can be read.
results="$DPUBLK_CACHE/check-logs/$(date -u +%Y%m%dT%H%M%SZ)-$$"
mkdir -p "$results" || die "cannot make $results"
ls -1d "$DPUBLK_CACHE"/check-logs/*/ 2>/dev/null | head -n -10 | xargs -r rm -rf
started=$(date +%s)
suites=${DPUBLK_CHECK_SUITES:-host vm}
level=${DPUBLK_CHECK_LEVEL:-sample}
case $level in sample | full) ;; *) die "DPUBLK_CHECK_LEVEL must be sample or full" ;; esac
allowed_skips="$DPUBLK_TOP/selftests/dpublk/skips-allowed"

summary() {
	echo
	echo "check took $(($(date +%s) - started)) s"
	echo "logs: $results"
	echo "$passed passed, $failed failed, $skipped skipped"
}
# kill_tree PID: a process and everything it started.
kill_tree() {
	local child
	for child in $(pgrep -P "$1"); do kill_tree "$child"; done
	kill "$1" 2>/dev/null
}
on_term() {
	[ -z "$host_heavy_pid" ] || kill_tree "$host_heavy_pid"
	echo "FAIL make check: stopped by a signal (time limit?) after $(($(date +%s) - started)) s"
	failed=$((failed + 1))
	summary
	exit 1
}
trap on_term TERM INT

record() { # record NAME RC
	if [ "$2" = 0 ]; then
		passed=$((passed + 1)); echo "PASS $1"
	else
		failed=$((failed + 1)); echo "FAIL $1"
	fi
}

# judge NAME KTAP-FILE TESTS... : counts a KTAP stream through ktap-verdict.sh.
judge() {
	local name=$1 ktap=$2 verdict p f s
	shift 2
	verdict=$("$DPUBLK_TOP/scripts/ktap-verdict.sh" "$name" "$ktap" "$allowed_skips" "$@")
	grep -v '^counts ' <<<"$verdict"
	read -r _ p f s < <(grep '^counts ' <<<"$verdict")
	passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

# not_run NAME WHY TESTS... : tests that could not run count as failed.
not_run() {
	local name=$1 why=$2 t
	shift 2
	for t in "$@"; do echo "FAIL $name/$t: not run: $why"; done
	failed=$((failed + $#))
}

want_suite() { [ -z "${DPUBLK_CHECK_ONLY:-}" ] || [[ " $DPUBLK_CHECK_ONLY " == *" $1 "* ]]; }

# The heavy host part: clippy, the cargo tests, the NVMe/TCP fuzz sample.
# With VM suites to run it goes beside them (below), at the lowest CPU
# priority: a VM under TCG leaves a core idle for a good part of its tests
# (waits on timeouts, sleeps, I/O), and the host part fills those gaps.
host_heavy() {
	export CARGO_TARGET_DIR=${DPUBLK_CHECK_TARGET_DIR:-$DPUBLK_CACHE/cargo-check-target}
	cargo clippy --workspace --all-targets --quiet -- -D warnings >"$results/clippy.log" 2>&1
	rc=$?; [ $rc = 0 ] || tail -40 "$results/clippy.log"
	record "cargo clippy -D warnings" $rc
	# An ignored cargo test counts as skipped, so it must say why it is
	# not run (`#[ignore = "why"]`); a bare #[ignore] fails.
	bare_ignores=$(grep -rn '#\[ignore\]' --include='*.rs' rust tools)
	[ -z "$bare_ignores" ] || echo "$bare_ignores"
	record "every ignored cargo test gives its reason" $([ -z "$bare_ignores" ]; echo $?)
	cargo test --workspace --no-fail-fast 2>&1 | tee "$results/cargo-test.log" | grep -E '^test result:|FAILED|panicked'
	rc=${PIPESTATUS[0]}
	# Count the individual cargo tests, so the closing line tells how much
	# ran; ignored tests are skips, and there should be none.
	read -r cargo_pass cargo_fail cargo_ignored < <(awk '/^test result:/ {
		for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
		END { print p + 0, f + 0, g + 0 }' "$results/cargo-test.log")
	passed=$((passed + cargo_pass)); failed=$((failed + cargo_fail)); skipped=$((skipped + cargo_ignored))
	echo "cargo test: $cargo_pass passed, $cargo_fail failed, $cargo_ignored ignored"
	if [ $rc != 0 ] && [ "$cargo_fail" = 0 ]; then
		record "cargo test (build or harness error)" $rc
	fi
	# The NVMe/TCP PDU parser takes bytes from the network: its mutation
	# fuzzer's seeded sample (`make fuzz-nvmf` adds the session fuzzer).
	cargo run --release --quiet -p nvme-tcp --bin nvme-tcp-fuzz -- --inputs 10000000 --seed 1 \
		>"$results/fuzz-nvmf.log" 2>&1
	rc=$?; [ $rc = 0 ] || tail -20 "$results/fuzz-nvmf.log"
	record "nvme-tcp PDU fuzz, 10M inputs" $rc
}

# start_host_heavy: runs host_heavy in the background at the lowest CPU
# priority, its output and its counts kept in $results until
# merge_host_heavy prints and adds them (never interleaved with the VM
# suites' output).
host_heavy_pid=
start_host_heavy() {
	[[ " $suites " == *" host "* ]] || return 0
	echo "=== host: clippy, cargo test and the fuzz sample run beside the VM suites (output below, at the end)"
	(
		renice -n 19 -p "$BASHPID" >/dev/null 2>&1 || true
		passed=0 failed=0 skipped=0
		host_heavy
		echo "$passed $failed $skipped" >"$results/host-heavy.counts"
	) >"$results/host-heavy.out" 2>&1 </dev/null &
	host_heavy_pid=$!
}
merge_host_heavy() {
	local p f s
	[ -n "$host_heavy_pid" ] || return 0
	wait "$host_heavy_pid"
	host_heavy_pid=
	echo "=== host: clippy, cargo test and the fuzz sample"
	cat "$results/host-heavy.out"
	if read -r p f s <"$results/host-heavy.counts" 2>/dev/null; then
		passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
	else
		record "host part (clippy, cargo test, fuzz) finished and reported" 1
	fi
}

if [[ " $suites " == *" host "* ]]; then
	"$DPUBLK_TOP/scripts/setup-host.sh" || die "host setup failed"
	# The harness first: if it cannot tell a hang or a skip from a pass,
	# nothing after it means anything.
	"$DPUBLK_TOP/scripts/tests/test-harness.sh" >"$results/harness.ktap" 2>&1
	grep -E '^(not )?ok ' "$results/harness.ktap" | sed 's/^not ok [0-9]* /FAIL harness: /; s/^ok [0-9]* /PASS harness: /'
	p=$(grep -c '^ok ' "$results/harness.ktap"); f=$(grep -c '^not ok ' "$results/harness.ktap")
	passed=$((passed + p)); failed=$((failed + f))
	plan=$(sed -n 's/^1\.\.//p' "$results/harness.ktap")
	[ "$plan" = $((p + f)) ] && grep -q '^# Totals:' "$results/harness.ktap"
	record "harness tests all reported (plan ${plan:-none}, $((p + f)) results)" $?
	# The benchmark report's arithmetic (medians, ratios, stall flags) on
	# synthetic fio output: a wrong ratio in `make bench` must fail here.
	python3 "$DPUBLK_TOP/scripts/bench-report-test.py" >"$results/bench-report.log" 2>&1
	rc=$?; [ $rc = 0 ] || tail -30 "$results/bench-report.log"
	record "bench report unit tests ($(grep -o 'Ran [0-9]* tests' "$results/bench-report.log"))" $rc
	# Lint and test builds are cached outside the repository, so a fresh
	# clone does not compile every dependency again; cargo's own fingerprints
	# decide what is still valid. (The release build is cached the same
	# way, below.)
	export CARGO_TARGET_DIR=${DPUBLK_CHECK_TARGET_DIR:-$DPUBLK_CACHE/cargo-check-target}
	cargo fmt --all -- --check >"$results/fmt.log" 2>&1
	rc=$?; [ $rc = 0 ] || tail -20 "$results/fmt.log"
	record "cargo fmt --check" $rc
	unset CARGO_TARGET_DIR
	[[ " $suites " == *" vm "* ]] || host_heavy
fi

if [[ " $suites " == *" vm "* ]]; then
	ko=$("$DPUBLK_TOP/scripts/build-module.sh" 2>"$results/module.log")
	module_rc=$?; [ $module_rc = 0 ] || tail -40 "$results/module.log"
	record "dpublk.ko builds" $module_rc
	# The VM tests run target/release/dpuemu: when its build fails, the old
	# binary must not stand in for the new one. Built in a target directory
	# of the cache (dependencies compiled once, not per clone; cargo's
	# fingerprints decide what is still valid), then copied in.
	rm -f "$DPUBLK_TOP/target/release/dpuemu"
	release_target=${DPUBLK_RELEASE_TARGET_DIR:-$DPUBLK_CACHE/cargo-release-target}
	# A fresh clone gives every workspace file a new mtime, so cargo would
	# compile all of the workspace's own crates again: a binary built from
	# the same committed sources and the same toolchain is reused instead
	# (tree_key in lib.sh; never for an uncommitted tree).
	dpuemu_key=$(tree_key Cargo.toml Cargo.lock rust tools)
	dpuemu_cached=
	[ -n "$dpuemu_key" ] &&
		dpuemu_cached="$DPUBLK_CACHE/dpuemu-builds/$(hash_of "$(cargo --version)" "$(rustc --version)" "$dpuemu_key")/dpuemu"
	if [ -n "$dpuemu_cached" ] && [ -x "$dpuemu_cached" ]; then
		install -D -m 755 "$dpuemu_cached" "$DPUBLK_TOP/target/release/dpuemu"
		dpuemu_rc=$?
		record "dpuemu release build (reused: same sources and toolchain)" $dpuemu_rc
	else
		CARGO_TARGET_DIR=$release_target cargo build --release --workspace --quiet 2>"$results/cargo-build.log" &&
			install -D -m 755 "$release_target/release/dpuemu" "$DPUBLK_TOP/target/release/dpuemu"
		dpuemu_rc=$?; [ $dpuemu_rc = 0 ] || tail -20 "$results/cargo-build.log"
		record "dpuemu release build" $dpuemu_rc
		if [ $dpuemu_rc = 0 ] && [ -n "$dpuemu_cached" ]; then
			cache_keep "$release_target/release/dpuemu" "$dpuemu_cached" 755
		fi
	fi
	start_host_heavy

	# run_suite NAME TIME-LIMIT VM-OPTIONS... -- TESTS...
	# Boots one VM with the given hardware, runs the tests, judges the KTAP.
	run_suite() {
		# DPUBLK_TIME_FACTOR multiplies every limit (make check-debug: the
		# debug kernel runs several times slower under TCG).
		local name=$1 limit=$(($2 * ${DPUBLK_TIME_FACTOR:-1})); shift 2
		local vm_opts=() tests=() needs_accel=0
		while [ "$1" != -- ]; do vm_opts+=("$1"); [ "$1" = --accelerator ] && needs_accel=1; shift; done
		shift
		tests=("$@")
		want_suite "$name" || return 0
		echo "=== VM suite: $name (${#tests[@]} tests, limit ${limit}s), $(date +%T)"
		if [ "$module_rc" != 0 ]; then not_run "$name" "dpublk.ko did not build" "${tests[@]}"; return; fi
		if [ "$needs_accel" = 1 ] && [ "$dpuemu_rc" != 0 ]; then
			not_run "$name" "dpuemu did not build" "${tests[@]}"; return
		fi
		local t0=$(date +%s) boot
		for boot in 1 2; do
			# DPUBLK_GUEST_ENV: VAR=VALUE words for the tests (make check's
			# shorter samples of long tests).
			DPUBLK_LOG_DIR="$results/vm-$name.logs" DPUBLK_VM_TIMEOUT=$limit "$DPUBLK_TOP/scripts/vm.sh" "${vm_opts[@]}" -- \
				env ${DPUBLK_GUEST_ENV:-} DPUBLK_TIME_FACTOR=${DPUBLK_TIME_FACTOR:-1} \
				selftests/dpublk/run_tests.sh "${tests[@]}" \
				2> >(tee "$results/vm-$name.err" | grep -E '^\[dpublk|error|time limit' >&2) | tee "$results/vm-$name.ktap"
			# Once (seen 1 boot in about 30 on 2026-12-04), QEMU with the
			# vIOMMU and vfio-user functions exited within seconds, before
			# the guest printed anything. A boot that printed not even the
			# KTAP header is tried once more, and says so; a boot that ran
			# any test is never repeated.
			[ "$boot" = 1 ] && ! grep -q '^TAP version' "$results/vm-$name.ktap" &&
				[ $(($(date +%s) - t0)) -lt 60 ] || break
			echo "RETRY $name: the VM ended after $(($(date +%s) - t0)) s before the tests started; booting it once more"
			cp "$results/vm-$name.err" "$results/vm-$name.boot1.err"
		done
		echo "=== VM suite $name took $(($(date +%s) - t0)) s"
		grep -q '^# Totals:' "$results/vm-$name.ktap" || { echo "VM stderr tail:"; tail -30 "$results/vm-$name.err"; }
		judge "$name" "$results/vm-$name.ktap" "${tests[@]}"
	}
	# run_script NAME "SCRIPT [ARGS...]" TESTS... : a multi-boot test script
	# that prints its own KTAP (persistence, power-loss campaign).
	run_script() {
		local name=$1 script=() ; read -r -a script <<<"$2"; shift 2
		want_suite "$name" || return 0
		echo "=== VM suite: $name ($# results expected), $(date +%T)"
		if [ "$module_rc" != 0 ] || [ "$dpuemu_rc" != 0 ]; then
			not_run "$name" "a build it needs failed" "$@"; return
		fi
		local t0=$(date +%s)
		DPUBLK_LOG_DIR="$results/vm-$name.logs" "$DPUBLK_TOP/scripts/${script[0]}" "${script[@]:1}" 2> >(tee "$results/vm-$name.err" | grep -E '^\[dpublk|time limit' >&2) |
			tee "$results/vm-$name.ktap"
		echo "=== VM suite $name took $(($(date +%s) - t0)) s"
		judge "$name" "$results/vm-$name.ktap" "$@"
	}

	if [ "$level" = full ]; then
		# The stock drivers, the module's KUnit suites, and NVMe/TCP inside the
		# guest (dpuemu's target against Linux's nvme-tcp host, dpuemu's
		# initiator against Linux's nvmet-tcp; each starts its own dpuemu).
		run_suite basic 1100 -- test_load_unload test_configfs_root test_null_blk_fio test_rnull_fio \
			test_dpublk_kunit test_nvmf_tcp test_nvmf_initiator test_nvmf_remote_member test_ha_failover
		# dpuemu's functions under the stock nvme driver (issue 3).
		run_suite accel 600 --accelerator --ssds 2 -- test_functions_present test_ssd_fio_verify test_dpuemu_idle
		run_suite accel-iommu 600 --accelerator --ssds 2 --iommu -- test_functions_present test_ssd_fio_verify
		# dpublk driving the accelerator, namespace 1 passed through to SSD 0.
		# The hostile device for 30 s here; HOSTILE_SECONDS=120 and more when run alone.
		DPUBLK_GUEST_ENV="HOSTILE_SECONDS=30" DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0" \
			run_suite dpublk 1200 --accelerator --ssds 2 -- \
			test_dpublk_probe test_dpublk_fio_verify test_dpublk_fs test_dpublk_sched_switch \
			test_dpublk_cpu_hotplug test_dpublk_pci_remove test_dpublk_rmmod_during_io \
			test_dpublk_reset test_dpublk_hostile test_dpublk_dead_device
		# SSD 1 is a zoned SSD function, tested next to QEMU's own zoned
		# namespace (issue 13).
		DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0 --zoned-ssd 1:16M:12M:8:10" \
			run_suite dpublk-iommu 600 --accelerator --ssds 2 --iommu --qemu-zns 512M -- \
			test_dpublk_probe test_dpublk_fio_verify test_dpublk_pci_remove test_zns_function
		# configfs management (issue 5), thin volumes, snapshots and clones,
		# data reduction and encryption (issues 7 and 8): the same four SSD
		# functions of 512 MiB, so one VM boot.
		# The configfs races with 300 iterations per writer here (1,000 alone).
		DPUBLK_GUEST_ENV="DPUBLK_RACE_ITERATIONS=300" \
			run_suite management 1500 --accelerator --ssds 4 --ssd-size 512M -- \
			test_configfs_lifecycle test_configfs_bad_input test_configfs_races test_configfs_lock_scope \
			test_configfs_snapshot_ro test_configfs_samples test_dpublk_flush_discard \
			test_thin_snapshot_clone test_thin_snapshot_disk test_thin_pool_full \
			test_reduction_dedup_compress test_reduction_encryption
		# The accelerator's NVMe/TCP target configured through dpublk's
		# configfs (issue 17), reached by the guest's nvme-tcp through QEMU's
		# user network (the target listens in the host's dpuemu).
		run_suite nvmf-configfs 600 --accelerator --ssds 2 --ssd-size 512M --net -- test_nvmf_configfs
		# A remote SSD configured through configfs (issue 17): the host's
		# dpuemu reaches nvmet-tcp in the guest through a forward of QEMU's
		# user network, and mirrors a local SSD onto it.
		run_suite nvmf-remote-configfs 1200 --accelerator --ssds 2 --ssd-size 512M --net-forward auto:4420 -- \
			test_nvmf_remote_configfs
		# Protection: degraded mode, rebuild onto a spare, scrub (issue 6), a
		# scrub under forced resets and unbind, and the driver refusing corrupt
		# admin payloads (issue 14). Scrubs limited to 256 MB/s of SSD reads,
		# so one lasts seconds and the unbind meets one running.
		DPUBLK_DPUEMU_ARGS="--scrub-rate 256M" \
			run_suite protection 1500 --accelerator --ssds 7 --ssd-size 128M -- \
			test_protection_scrub test_protection_scrub_reset test_protection_degraded \
			test_protection_rebuild test_dpublk_hostile_payloads
		# Log-RAID (issue 13): 4+2 and 3+1 over conventional SSD functions,
		# degraded by two while fio verifies.
		run_suite lograid 600 --accelerator --ssds 6 -- test_lograid
		# Several VM runs over the same SSD images each (QEMU's vfio-user client
		# does not survive its server's death). The power-loss campaign's
		# sample: two power cuts (three boots); `make crash N=50` is the campaign.
		DPUBLK_VM_TIMEOUT=600 run_script power-loss "crash-campaign.sh --kill-points 2" kp0 kp1
		DPUBLK_VM_TIMEOUT=600 run_script volume-persistence persistence-test.sh \
			locked_create persistence_create locked_verify persistence_verify
	else
		# The sample: one boot per kind of hardware, each suite's tests that
		# catch the most per second, shortened where a test has a length
		# knob; every test of every suite runs in `make check-full`.
		# dpublk on the accelerator behind the vIOMMU: data, lost command
		# (abort and reset), the hostile device for 10 s, PCI remove; SSD 1
		# a zoned SSD function next to QEMU's zoned namespace.
		DPUBLK_GUEST_ENV="HOSTILE_SECONDS=10 DPUBLK_FIO_JOB_MB=2 DPUBLK_RESET_JOB_MB=24 DPUBLK_RESET_BUSY_SECONDS=15 DPUBLK_RESET_IO_TIMEOUT_MS=3000" \
			DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0 --zoned-ssd 1:16M:12M:8:10" \
			run_suite dpublk 600 --accelerator --ssds 2 --iommu --qemu-zns 512M -- \
			test_dpublk_probe test_dpublk_fio_verify test_dpublk_reset test_dpublk_hostile \
			test_dpublk_pci_remove test_zns_function
		# Module load and unload (here with the accelerator bound each time),
		# the configfs root, the KUnit suites, dpuemu's NVMe/TCP target under
		# Linux's nvme-tcp host (full: the basic suite, without an
		# accelerator); snapshot disks read-only, thin snapshots and clones,
		# degraded RAID6, EC and RAID10 (the persistence suite makes
		# encrypted, compressed volumes). One boot.
		DPUBLK_GUEST_ENV="DPUBLK_SNAPSHOT_RO_CYCLES=100 DPUBLK_DEGRADED_FIO_MB=32" \
			run_suite management 600 --accelerator --ssds 6 --ssd-size 512M -- \
			test_load_unload test_configfs_root test_dpublk_kunit test_nvmf_tcp \
			test_configfs_snapshot_ro test_thin_snapshot_clone test_protection_degraded
		# The HA pair under Linux's native multipath: two SIGKILLs of the
		# active, the ghost write, handover and failback (`make crash-ha
		# N=50` is the campaign). Its own boot: native multipath needs the
		# NVMe core loaded with multipath=Y, which the other boots' SSD
		# functions under the stock nvme driver rule out.
		DPUBLK_GUEST_ENV="HA_KILLS=2" run_suite ha 400 -- test_ha_failover
		# One power cut, on a layout the seed picks, then the persistence
		# runs. (Run side by side in two VM slots on 2026-12-04 they took
		# 244 s together against 248 s one after the other: TCG guests
		# are CPU-bound, so two at once only slow each other down.)
		DPUBLK_VM_TIMEOUT=400 run_script power-loss \
			"crash-campaign.sh --kill-points 1" kp0
		DPUBLK_PERSIST_SNAPSHOTS=10 DPUBLK_VM_TIMEOUT=400 run_script volume-persistence persistence-test.sh \
			locked_create persistence_create locked_verify persistence_verify
	fi
fi

merge_host_heavy
summary
[ "$failed" = 0 ]
