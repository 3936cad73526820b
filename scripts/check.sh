#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `make check`: every test. Userspace first (cargo fmt, clippy, tests), then
# the module build, then the kselftests inside the VM (without and with the
# accelerator, with and without a vIOMMU as the suites require).
# Ends with 'N passed, N failed'; exits non-zero on any failure.
#
#   DPUBLK_CHECK_SUITES="host vm"   which parts to run (default: all)
. "$(dirname "$0")/lib.sh"
set +e

cd "$DPUBLK_TOP"
passed=0 failed=0
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
suites=${DPUBLK_CHECK_SUITES:-host vm}

record() { # record NAME RC
	if [ "$2" = 0 ]; then
		passed=$((passed + 1)); echo "PASS $1"
	else
		failed=$((failed + 1)); echo "FAIL $1"
	fi
}

if [[ " $suites " == *" host "* ]]; then
	"$DPUBLK_TOP/scripts/setup-host.sh" || die "host setup failed"
	# Lint and test builds are cached outside the repository, so a fresh
	# clone does not compile every dependency again; cargo's own fingerprints
	# decide what is still valid. (The release build that `make` and the VM
	# runner use stays in target/.)
	export CARGO_TARGET_DIR=${DPUBLK_CHECK_TARGET_DIR:-$DPUBLK_CACHE/cargo-check-target}
	cargo fmt --all -- --check >"$results/fmt.log" 2>&1
	rc=$?; [ $rc = 0 ] || tail -20 "$results/fmt.log"
	record "cargo fmt --check" $rc
	cargo clippy --workspace --all-targets --quiet -- -D warnings >"$results/clippy.log" 2>&1
	rc=$?; [ $rc = 0 ] || tail -40 "$results/clippy.log"
	record "cargo clippy -D warnings" $rc
	cargo test --workspace --no-fail-fast 2>&1 | tee "$results/cargo-test.log" | grep -E '^test result:|FAILED|panicked' 
	rc=${PIPESTATUS[0]}
	# Count the individual cargo tests, so the closing line tells how much ran.
	read -r cargo_pass cargo_fail < <(awk '/^test result:/ {
		for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
		END { print p + 0, f + 0 }' "$results/cargo-test.log")
	passed=$((passed + cargo_pass)); failed=$((failed + cargo_fail))
	echo "cargo test: $cargo_pass passed, $cargo_fail failed"
	if [ $rc != 0 ] && [ "$cargo_fail" = 0 ]; then
		record "cargo test (build or harness error)" $rc
	fi
	unset CARGO_TARGET_DIR
fi

if [[ " $suites " == *" vm "* ]]; then
	ko=$("$DPUBLK_TOP/scripts/build-module.sh" 2>"$results/module.log")
	rc=$?; [ $rc = 0 ] || tail -40 "$results/module.log"
	record "dpublk.ko builds" $rc
	if [ $rc = 0 ]; then
		cargo build --release --workspace --quiet 2>"$results/cargo-build.log" || tail -20 "$results/cargo-build.log"
		# Each VM suite boots once and runs its tests; KTAP comes back on stdout.
		run_suite() { # run_suite NAME VM-OPTIONS... -- TESTS...
			local name=$1; shift
			local vm_opts=()
			while [ "$1" != -- ]; do vm_opts+=("$1"); shift; done
			shift
			echo "=== VM suite: $name"
			"$DPUBLK_TOP/scripts/vm.sh" "${vm_opts[@]}" -- selftests/dpublk/run_tests.sh "$@" \
				2> >(tee "$results/vm-$name.err" | grep -E '^\[dpublk|error' >&2) | tee "$results/vm-$name.ktap"
			local p f
			p=$(grep -cE '^ok [0-9]+ ' "$results/vm-$name.ktap")
			f=$(grep -cE '^not ok [0-9]+ ' "$results/vm-$name.ktap")
			passed=$((passed + p)); failed=$((failed + f))
			if ! grep -q '^# Totals:' "$results/vm-$name.ktap"; then
				echo "VM suite $name did not finish (no KTAP totals); VM stderr tail:"
				tail -30 "$results/vm-$name.err"
				record "VM suite $name completes" 1
			fi
		}
		run_suite basic -- test_load_unload test_configfs_root test_null_blk_fio test_rnull_fio \
			test_dpublk_kunit
		# dpuemu's functions under the stock nvme driver (issue 3).
		run_suite accel --accelerator --ssds 2 -- test_functions_present test_ssd_fio_verify test_dpuemu_idle
		run_suite accel-iommu --accelerator --ssds 2 --iommu -- test_functions_present test_ssd_fio_verify
		# dpublk driving the accelerator, namespace 1 passed through to SSD 0.
		DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0" run_suite dpublk --accelerator --ssds 2 -- \
			test_dpublk_probe test_dpublk_fio_verify test_dpublk_fs test_dpublk_sched_switch \
			test_dpublk_cpu_hotplug test_dpublk_pci_remove test_dpublk_rmmod_during_io \
			test_dpublk_reset test_dpublk_dead_device
		DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0" run_suite dpublk-iommu --accelerator --ssds 2 --iommu -- \
			test_dpublk_probe test_dpublk_fio_verify test_dpublk_pci_remove
		# configfs management over four SSD functions (issue 5).
		run_suite management --accelerator --ssds 4 --ssd-size 512M -- \
			test_configfs_lifecycle test_configfs_bad_input test_configfs_samples test_dpublk_flush_discard
		# Thin volumes, snapshots and clones, data reduction and encryption
		# (issues 7 and 8).
		run_suite services --accelerator --ssds 4 --ssd-size 512M -- \
			test_thin_snapshot_clone test_thin_snapshot_disk test_thin_pool_full \
			test_reduction_dedup_compress test_reduction_encryption
		# Protection: degraded mode, rebuild onto a spare, scrub (issue 6).
		run_suite protection --accelerator --ssds 7 --ssd-size 128M -- \
			test_protection_scrub test_protection_degraded test_protection_rebuild
		# Two VM runs over the same SSD images (QEMU's vfio-user client does
		# not survive its server's death).
		echo "=== VM suite: dpuemu-crash"
		"$DPUBLK_TOP/scripts/crash-test.sh" 2>"$results/crash.err" | tee "$results/vm-crash.ktap"
		p=$(grep -cE '^ok [0-9]+ ' "$results/vm-crash.ktap")
		f=$(grep -cE '^not ok [0-9]+ ' "$results/vm-crash.ktap")
		passed=$((passed + p)); failed=$((failed + f))
		grep -q '^# Totals:' "$results/vm-crash.ktap" || { tail -20 "$results/crash.err"; record "dpuemu crash test completes" 1; }
		# Volumes across a module reload and a kill -9 of dpuemu (issue 5).
		echo "=== VM suite: volume-persistence"
		"$DPUBLK_TOP/scripts/persistence-test.sh" 2>"$results/persist.err" | tee "$results/vm-persist.ktap"
		p=$(grep -cE '^ok [0-9]+ ' "$results/vm-persist.ktap")
		f=$(grep -cE '^not ok [0-9]+ ' "$results/vm-persist.ktap")
		passed=$((passed + p)); failed=$((failed + f))
		grep -q '^# Totals:' "$results/vm-persist.ktap" || { tail -20 "$results/persist.err"; record "volume persistence test completes" 1; }
	fi
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
