#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Concurrent configfs writers, while fio writes and verifies a neighbouring
# volume the whole time. Each race has two or more writers of at least
# DPUBLK_RACE_ITERATIONS (1000) iterations each:
#   same attribute    two writers of the same settings of one volume handle,
#                     and two of `enable` of one existing volume
#   mkdir/rmdir       two writers each on one SSD handle name and one volume
#                     handle name; the SSD handles race for the same SSD
#                     through `device` (one by PCI address, one by serial)
#   enable vs destroy the two enable writers against a `destroy` writer
#   snapshots         two writers of mkdir + destroy + rmdir of one snapshot
#                     name, against an `expose 1` / `expose 0` writer
#   readers           one process reads every attribute of the raced objects
# Every failed operation must fail with an errno the race explains (EEXIST
# for a mkdir that lost, ENOENT for a directory removed under a writer,
# EBUSY for what the documentation refuses while in use). At the end fio
# verified every block it wrote, every configfs object agrees with the
# accelerator (volume_list, snapshot_list, the disks), and the kernel log
# holds no warning.
. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/dpublk_disk_common.sh"
. "$(dirname "$0")/configfs_common.sh"

ITERATIONS=${DPUBLK_RACE_ITERATIONS:-1000}
unload_dpublk
[ "$(ssd_pci_addresses | wc -l)" -ge 4 ] || skip "needs 4 SSD functions"
command -v python3 >/dev/null || fail "python3 is missing (the race writers are Python processes)"
dmesg_mark
load_dpublk_management
V=$DPUBLK_CFS/volumes
bdf3=$(ssd_pci 3)
serial3=$(ssd_serial 3)
[ -n "$serial3" ] || fail "SSD 3 ($bdf3) shows no serial under the nvme driver"

# nbr: the neighbour fio runs on. churn: enabled, disabled and destroyed
# by the race. snaps: exists, disabled; its snapshots are raced. cfg: a
# handle never created, whose settings are raced. SSD 3 stays with nvme:
# the SSD handles race for it.
attach_ssd n0 0
attach_ssd r1 1
attach_ssd r2 2
nbr=$(make_volume nbr n0 linear 96M)
make_volume churn r1 linear 16M >/dev/null
cfs_write_busy "$V/churn/enable" 0
make_volume snaps r2 linear 24M >/dev/null
cfs_write_busy "$V/snaps/enable" 0
mkdir "$V/cfg" || fail "mkdir volumes/cfg"

# fio writes and verifies nbr until told to stop, run after run.
mkdir "$TEST_TMP/fio"
(
	run=0
	while [ ! -e "$TEST_TMP/fio/stop" ]; do
		run=$((run + 1))
		fio --name=neighbour --filename="$nbr" --ioengine=io_uring --direct=1 --rw=randwrite \
			--bs=4k --iodepth=8 --rate_iops=300 --size=16M --offset=$(((run % 4) * 16))M --verify=crc32c \
			--verify_fatal=1 --do_verify=1 --verify_state_save=0 --randseed=$run \
			--output-format=json --output="$TEST_TMP/fio/run$run.json" >"$TEST_TMP/fio/run$run.log" 2>&1 ||
			echo "$run" >>"$TEST_TMP/fio/failed"
	done
) &
fio_loop=$!
on_exit "touch '$TEST_TMP/fio/stop'; wait $fio_loop 2>/dev/null"
for i in $(seq 1 600); do
	[ "$(awk '{ print $5 }' "/sys/block/${nbr#/dev/}/stat")" -gt 100 ] && break
	sleep 0.1
done
[ "$(awk '{ print $5 }' "/sys/block/${nbr#/dev/}/stat")" -gt 100 ] || fail "fio does not write to $nbr"

started=$(date +%s)
python3 - "$DPUBLK_CFS" "$ITERATIONS" "$bdf3" "$serial3" "$TEST_TMP" >"$TEST_TMP/race.out" 2>&1 <<'PY'
import errno
import json
import os
import sys
import time

cfs, iterations, bdf3, serial3, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
V, S = cfs + "/volumes", cfs + "/ssds"


def write(path, value):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Tally:
    """Counts each operation's outcomes; an errno not allowed is a failure."""

    def __init__(self):
        self.counts, self.unexpected = {}, []

    def run(self, op, fn, *allowed):
        try:
            fn()
            outcome = "ok"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno, str(e.errno))
            if outcome not in allowed:
                self.unexpected.append(f"{op}: {outcome} ({e})")
        key = f"{op} {outcome}"
        self.counts[key] = self.counts.get(key, 0) + 1
        return outcome == "ok"


def same_settings(t, values):
    for i in range(iterations):
        compression, ec_k, chunk = values[i % len(values)]
        t.run("cfg/compression", lambda: write(f"{V}/cfg/compression", compression))
        t.run("cfg/ec_k", lambda: write(f"{V}/cfg/ec_k", ec_k))
        t.run("cfg/chunk_size", lambda: write(f"{V}/cfg/chunk_size", chunk))


def ssd_handle(t, name, device):
    for _ in range(iterations):
        t.run(f"mkdir ssds/{name}", lambda: os.mkdir(f"{S}/{name}"), "EEXIST")
        # EEXIST: the other handle has the SSD; EBUSY: the other writer of
        # this name is writing `device` too; ENOENT: the directory went.
        t.run(f"ssds/{name}/device", lambda: write(f"{S}/{name}/device", device), "EEXIST", "EBUSY", "ENOENT")
        t.run(f"rmdir ssds/{name}", lambda: os.rmdir(f"{S}/{name}"), "ENOENT")


def volume_handle(t):
    for _ in range(iterations):
        t.run("mkdir volumes/vm", lambda: os.mkdir(f"{V}/vm"), "EEXIST")
        t.run("rmdir volumes/vm", lambda: os.rmdir(f"{V}/vm"), "ENOENT")


def enabler(t):
    for _ in range(iterations):
        t.run("churn/enable 1", lambda: write(f"{V}/churn/enable", "1"))
        # EBUSY: udev or blkid has the new disk open for a moment.
        t.run("churn/enable 0", lambda: write(f"{V}/churn/enable", "0"), "EBUSY")


def destroyer(t):
    for _ in range(iterations):
        # EBUSY: enabled; ENOENT: destroyed and not created again yet.
        t.run("churn/destroy", lambda: write(f"{V}/churn/destroy", "1"), "EBUSY", "ENOENT")


SN = f"{V}/snaps/snapshots/sn"


def snapshotter(t):
    for _ in range(iterations):
        t.run("mkdir sn", lambda: os.mkdir(SN), "EEXIST")
        # ENOENT: the directory went, or the other writer destroyed it;
        # EBUSY: exposed.
        t.run("sn/destroy", lambda: write(f"{SN}/destroy", "1"), "ENOENT", "EBUSY")
        t.run("rmdir sn", lambda: os.rmdir(SN), "ENOENT", "EBUSY")


def exposer(t):
    # As long as the snapshot writers run (and at least `iterations`
    # times): most attempts find no snapshot handle or a destroyed one.
    cycles = 0
    while cycles < iterations or not all(os.path.exists(f"{tmp}/{w}.json") for w in ("snapshot-a", "snapshot-b")):
        if not t.run("sn/expose 1", lambda: write(f"{SN}/expose", "1"), "ENOENT"):
            time.sleep(0.005)  # no snapshot right now: leave the CPU to the others
        t.run("sn/expose 0", lambda: write(f"{SN}/expose", "0"), "ENOENT", "EBUSY")
        cycles += 1
    # Leave it hidden, so the snapshot writers' last rmdir can succeed.
    for _ in range(100):
        if t.run("sn/expose 0 (final)", lambda: write(f"{SN}/expose", "0"), "ENOENT", "EBUSY"):
            break


def reader(t, stop):
    paths = [f"{cfs}/volume_list", f"{V}/churn/state", f"{V}/churn/enable", f"{V}/churn/nsid",
             f"{V}/churn/device", f"{V}/churn/snapshot_list", f"{V}/snaps/snapshot_list",
             f"{SN}/id", f"{SN}/expose", f"{S}/m/index", f"{S}/m2/state", f"{V}/vm/state",
             f"{V}/cfg/compression"]
    while not os.path.exists(stop):
        for p in paths:
            t.run("read " + p[len(cfs) + 1:], lambda: read(p), "ENOENT")
        time.sleep(0.02)


writers = {
    "settings-a": lambda t: same_settings(t, [("lz4", "4", "64K"), ("none", "6", "64K")]),
    "settings-b": lambda t: same_settings(t, [("zstd", "8", "128K"), ("none", "2", "4K")]),
    "ssd-m-a": lambda t: ssd_handle(t, "m", bdf3),
    "ssd-m-b": lambda t: ssd_handle(t, "m", bdf3),
    "ssd-m2-a": lambda t: ssd_handle(t, "m2", serial3),
    "ssd-m2-b": lambda t: ssd_handle(t, "m2", serial3),
    "volume-vm-a": volume_handle,
    "volume-vm-b": volume_handle,
    "enable-a": enabler,
    "enable-b": enabler,
    "destroy": destroyer,
    "snapshot-a": snapshotter,
    "snapshot-b": snapshotter,
    "expose": exposer,
}
stop = f"{tmp}/readers.stop"
pids = {}
for name, fn in list(writers.items()) + [("reader", lambda t: reader(t, stop))]:
    pid = os.fork()
    if pid == 0:
        t = Tally()
        begun = time.monotonic()
        try:
            fn(t)
        except Exception as e:  # a crash of the writer itself is a failure
            t.unexpected.append(f"writer crashed: {e!r}")
        with open(f"{tmp}/{name}.json", "w") as f:
            json.dump({"counts": t.counts, "unexpected": t.unexpected,
                       "seconds": round(time.monotonic() - begun)}, f)
        os._exit(0)
    pids[pid] = name
done = 0
while done < len(writers):
    pid, _ = os.wait()
    if pids[pid] != "reader":
        done += 1
open(stop, "w").close()
os.wait()
bad = 0
for name in pids.values():
    with open(f"{tmp}/{name}.json") as f:
        r = json.load(f)
    summary = ", ".join(f"{k}={v}" for k, v in sorted(r["counts"].items()))
    print(f"{name}: {summary} ({r['seconds']} s)")
    for u in r["unexpected"][:5]:
        print(f"FAIL {name}: unexpected {u}")
    bad += len(r["unexpected"])
    if name != "reader":
        ops = sum(v for k, v in r["counts"].items())
        if ops < iterations:
            print(f"FAIL {name}: only {ops} operations")
            bad += 1
sys.exit(1 if bad else 0)
PY
race_rc=$?
elapsed=$(($(date +%s) - started))
sed 's/^/#   /' "$TEST_TMP/race.out"
[ "$race_rc" = 0 ] || fail "a race writer saw an errno the race does not explain (see above)"
diag "14 writers x $ITERATIONS iterations and a reader: $elapsed s"

# Each race did race: both outcomes of the contended operations happened.
# outcome WRITERS OUTCOME: how often the writers (a regex) saw OUTCOME.
outcome() { grep -E "^($1):" "$TEST_TMP/race.out" | grep -o "$2=[0-9]*" | awk -F= '{ n += $2 } END { print n + 0 }'; }
[ "$(outcome 'enable-[ab]' 'churn/enable 1 ok')" -ge "$ITERATIONS" ] || fail "enable seldom succeeded"
[ "$(outcome destroy 'churn/destroy ok')" -ge 1 ] || fail "destroy never won against enable"
[ "$(outcome 'snapshot-[ab]' 'mkdir sn ok')" -ge 1 ] || fail "no snapshot was taken"
[ "$(outcome expose 'sn/expose 1 ok')" -ge 1 ] || fail "the snapshot was never exposed"
[ "$(outcome 'ssd-m2-[ab]' 'ssds/m2/device ok')" -ge 1 ] || fail "ssds/m2 never got the SSD"
[ "$(outcome 'ssd-m-[ab]' 'ssds/m/device ok')" -ge 1 ] || fail "ssds/m never got the SSD"

touch "$TEST_TMP/fio/stop"
wait "$fio_loop"
runs=$(ls "$TEST_TMP"/fio/run*.json | wc -l)
[ ! -e "$TEST_TMP/fio/failed" ] || {
	tail -20 "$TEST_TMP/fio/run$(tail -1 "$TEST_TMP/fio/failed").log" | sed 's/^/#   /'
	fail "fio verify failed on the neighbour in run(s) $(paste -sd' ' "$TEST_TMP/fio/failed")"
}
verified=0
for f in "$TEST_TMP"/fio/run*.json; do
	sed -n '/^{/,$p' "$f" >"$f.clean"
	[ "$(jq '[.jobs[].error] | add' "$f.clean")" = 0 ] || fail "fio $f reported an error"
	verified=$((verified + $(jq '[.jobs[].read.io_bytes] | add' "$f.clean")))
done
[ "$runs" -ge 1 ] && [ "$verified" -gt 0 ] || fail "fio ran $runs times and verified $verified bytes"
diag "fio on the neighbour: $runs runs, $((verified >> 20)) MiB verified, no error"

# The state is consistent, and the objects are where the races left them.
cfs_consistent >"$TEST_TMP/consistency" || { sed 's/^/#   /' "$TEST_TMP/consistency"; fail "configfs and the accelerator disagree"; }
for attr in compression ec_k chunk_size; do
	value=$(cat "$V/cfg/$attr")
	case "$attr=$value" in
	compression=lz4 | compression=zstd | compression=none | ec_k=[2468] | chunk_size=65536 | chunk_size=131072 | chunk_size=4096) ;;
	*) fail "volumes/cfg/$attr is '$value', a value no writer wrote" ;;
	esac
done
holders=0
for h in m m2; do
	[ -d "$DPUBLK_CFS/ssds/$h" ] && [ "$(cat "$DPUBLK_CFS/ssds/$h/index")" = 3 ] && holders=$((holders + 1))
done
[ "$holders" -le 1 ] || fail "two SSD handles stand for SSD 3"
[ "$(ssd_driver "$bdf3")" = nvme ] || fail "SSD 3 left the nvme driver during the races"
diag "configfs agrees with the accelerator; $(grep -c . "$DPUBLK_CFS/volume_list") volumes on it"

# Teardown: everything the races left goes, which also shows it can.
for h in m m2; do [ -d "$DPUBLK_CFS/ssds/$h" ] && { rmdir "$DPUBLK_CFS/ssds/$h" || fail "rmdir ssds/$h"; }; done
[ -d "$V/vm" ] && { rmdir "$V/vm" || fail "rmdir volumes/vm"; }
if [ -d "$V/snaps/snapshots/sn" ]; then
	cfs_write_busy "$V/snaps/snapshots/sn/expose" 0
	[ "$(cat "$V/snaps/snapshots/sn/id")" = -1 ] || cfs_write "$V/snaps/snapshots/sn/destroy" 1
	rmdir "$V/snaps/snapshots/sn" || fail "rmdir of the snapshot handle"
fi
# A snapshot the races left on the accelerator without a handle.
if grep -q '^sn ' "$V/snaps/snapshot_list"; then
	mkdir "$V/snaps/snapshots/sn" && cfs_write "$V/snaps/snapshots/sn/destroy" 1 && rmdir "$V/snaps/snapshots/sn"
fi
[ -z "$(cat "$V/snaps/snapshot_list")" ] || fail "snapshots left: $(cat "$V/snaps/snapshot_list")"
rmdir "$V/cfg" || fail "rmdir volumes/cfg"
cfs_write_busy "$V/churn/enable" 0
[ "$(cat "$V/churn/state")" = absent ] || cfs_write "$V/churn/destroy" 1
rmdir "$V/churn" || fail "rmdir volumes/churn"
remove_volume snaps
remove_volume nbr
for s in n0 r1 r2; do detach_ssd "$s"; done
unload_dpublk
dmesg_check_clean
exit $KSFT_PASS
