# SPDX-License-Identifier: GPL-2.0
#
# dpublk top-level Makefile.
#
#   make          build dpublk.ko (against our cached 7.3 tree) and the cargo workspace
#   make run      the main job: boot the VM with the emulated accelerator and show it working
#   make check    what CI runs: cargo tests, lint, fuzz sample, a sample of the VM kselftests
#   make check-full  every test: the same host part and every VM kselftest
#   make bench    benchmarks in the VM (see Documentation/benchmarks.rst)
#   make setup    install/build everything the above need (idempotent, cached)
#   make clean    remove build output in the repository (caches stay: see README)
#
# make KDIR=<Rust-enabled 7.3 build tree> builds the module against another
# tree with the toolchain on PATH (LLVM=, RUSTC=, BINDGEN= pass through).

KDIR ?=
LLVM ?= -19
MODULE_OUT := $(CURDIR)/build/module
CARGO ?= cargo

.PHONY: all module userspace setup run check check-full bench clean help

all: module userspace

help:
	@sed -n '3,15p' Makefile | sed 's/^# \{0,1\}//'

setup:
	scripts/setup.sh

ifeq ($(KDIR),)
# Our own tree, built in the chroot with the chroot's rustc: the same
# compiler builds the kernel and the module.
module:
	scripts/build-module.sh
else
module:
	mkdir -p $(MODULE_OUT)
	$(MAKE) -C $(KDIR) M=$(CURDIR) MO=$(MODULE_OUT) LLVM=$(LLVM) modules
endif

userspace:
	$(CARGO) build --release --workspace

run: all
	scripts/run.sh

# make check: what CI runs, host tests and a sample of the VM suites (about
# 10 minutes warm); make check-full: every VM test (about 35 minutes).
check:
	scripts/check.sh

check-full:
	DPUBLK_CHECK_LEVEL=full scripts/check.sh

bench: all
	scripts/bench.sh $(if $(QUICK),--quick) $(if $(ROWS),--rows "$(ROWS)") $(if $(WORKLOADS),--workloads "$(WORKLOADS)") $(if $(REPS),--reps $(REPS)) $(if $(RUNTIME),--runtime $(RUNTIME))

# make crash N=50: the power-loss campaign, N power cuts at random times
# while dpublk volumes of every layout are written (Documentation/testing.rst).
N ?= 3
.PHONY: crash
crash: all
	scripts/crash-campaign.sh --kill-points $(N)

# make crash-ha N=50: the HA pair's failover campaign in one VM boot:
# test_ha_failover with N SIGKILLs of the active node under fio verify and
# the acknowledged-writes log (Documentation/ha.rst, Testing); prints each
# stall and p50/p99/max. HA_MAX_P99_MS (default 2000) fails a slower p99;
# a stall over HA_MAX_STALL (5 s) fails at once.
HA_MAX_P99_MS ?= 2000
.PHONY: crash-ha
crash-ha: all
	DPUBLK_VM_TIMEOUT=$$(( 1200 + $(N) * 60 )) scripts/vm.sh -- \
		env HA_KILLS=$(N) HA_MAX_P99_MS=$(HA_MAX_P99_MS) DPUBLK_TIME_FACTOR=$$(( 1 + $(N) / 20 )) \
		selftests/dpublk/run_tests.sh test_ha_failover

# make hostile: dpublk under a hostile accelerator until HOSTILE_ANOMALIES
# (default 100000) protocol anomalies were injected at one I/O completion in
# HOSTILE_RATE (default 20), fio verifying every block (one VM boot); then
# HOSTILE_READS (default 10000) configfs reads and 100 rebinds with
# corrupted vendor and Identify payloads, each of which must be refused
# (a second boot); then HOSTILE_LOST (default 50) I/O commands the device
# never completes, one in HOSTILE_LOST_RATE (default 2000), timed out (3 s),
# aborted and recovered by controller resets (each requeues every lost
# command outstanding) while fio verifies (a third boot). Prints the count per kind from dpuemu's log.
HOSTILE_ANOMALIES ?= 100000
HOSTILE_RATE ?= 20
HOSTILE_READS ?= 10000
HOSTILE_LOST ?= 50
HOSTILE_LOST_RATE ?= 2000
.PHONY: hostile
hostile: all
	DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0 --hostile $(HOSTILE_RATE):1@hook" DPUBLK_VM_TIMEOUT=8400 \
		scripts/vm.sh --accelerator --ssds 2 -- env HOSTILE_ANOMALIES=$(HOSTILE_ANOMALIES) \
		selftests/dpublk/run_tests.sh test_dpublk_hostile_long
	DPUBLK_VM_TIMEOUT=3600 scripts/vm.sh --accelerator --ssds 4 --ssd-size 512M -- \
		env HOSTILE_READS=$(HOSTILE_READS) HOSTILE_BINDS=100 \
		selftests/dpublk/run_tests.sh test_dpublk_hostile_payloads
	DPUBLK_DPUEMU_ARGS="--passthrough-ssd 0 --hostile $(HOSTILE_LOST_RATE):3:never-complete@hook" \
		DPUBLK_VM_TIMEOUT=3600 scripts/vm.sh --accelerator --ssds 2 -- \
		env HOSTILE_ANOMALIES=$(HOSTILE_LOST) HOSTILE_REQUIRE=never-complete HOSTILE_IO_TIMEOUT_MS=3000 \
		HOSTILE_SECONDS=30 selftests/dpublk/run_tests.sh test_dpublk_hostile_long

# make check-debug: the dpublk, management and protection VM suites on the
# debug kernel (DPUBLK_KERNEL_VARIANT=debug: KASAN, lockdep, atomic-sleep
# checks, kmemleak, UBSAN; scripts/kconfig/debug.config), judged as make
# check judges them; then dpublk.ko is built again for the default kernel.
# Every suite's and test's time limit is DEBUG_TIME_FACTOR times make
# check's (configfs reads took 3 s instead of 0.15 s on the debug kernel).
DEBUG_TIME_FACTOR ?= 6
.PHONY: check-debug
check-debug:
	DPUBLK_KERNEL_VARIANT=debug DPUBLK_CHECK_SUITES=vm DPUBLK_CHECK_LEVEL=full \
		DPUBLK_TIME_FACTOR=$(DEBUG_TIME_FACTOR) \
		DPUBLK_CHECK_ONLY="dpublk management protection" scripts/check.sh; \
		rc=$$?; scripts/build-module.sh >/dev/null || rc=1; exit $$rc

clean:
	rm -rf build
	$(CARGO) clean

# make fuzz-nvmf: the NVMe/TCP PDU parser's mutation fuzzer, 10 million
# seeded inputs (FUZZ_INPUTS, FUZZ_SEED), then one million mutated sessions
# through dpuemu's NVMe/TCP connection code (FUZZ_STREAMS); fails on a panic
# or a broken invariant (Documentation/nvme-tcp.rst).
FUZZ_INPUTS ?= 10000000
FUZZ_SEED ?= 1
FUZZ_STREAMS ?= 1000000
.PHONY: fuzz-nvmf
fuzz-nvmf:
	$(CARGO) run --release -p nvme-tcp --bin nvme-tcp-fuzz -- --inputs $(FUZZ_INPUTS) --seed $(FUZZ_SEED)
	NVMF_STREAM_FUZZ=$(FUZZ_STREAMS) NVMF_STREAM_SEED=$(FUZZ_SEED) \
		$(CARGO) test -p dpuemu nvmf::stream_fuzz -- --nocapture

# make bench-engine: the engine's metadata at scale, natively (no VM) on
# sparse images under $(DPUBLK_CACHE)/bench-engine: RAM, snapshot, commit,
# lock-hold and open times of a paged pool against the in-memory format
# (settings: BENCH_ENGINE_* in Documentation/engine-volumes.rst). It runs at
# normal priority (BENCH_ENGINE_NICE): its lock-hold times are wall time, and
# at nice 19 on a loaded machine they measure the scheduler, not the engine.
BENCH_ENGINE_NICE ?= 0
.PHONY: bench-engine
bench-engine:
	nice -n $(BENCH_ENGINE_NICE) $(CARGO) run --release -p dpu-engine --example bench_engine
