#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Unit tests of scripts/bench-report.py on synthetic results directories
(fio JSON reports, CPU samples, host samples), without a VM or cargo.

    python3 scripts/bench-report-test.py [-v]
"""
import importlib.util
import json
import os
import tempfile
import unittest

_spec = importlib.util.spec_from_file_location(
    "bench_report", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-report.py"))
bench_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_report)

WINDOW = 10.0
HZ = 100


def fio_report(rw, bs, iops, lat_mean_us, p50_us, p99_us, p999_us):
    """A fio JSON report of one job with the fields the report reads."""
    size = bench_report.parse_size(bs)
    busy = {
        "io_bytes": int(iops * WINDOW * size), "total_ios": int(iops * WINDOW), "iops": iops,
        "bw_bytes": iops * size, "lat_ns": {"mean": lat_mean_us * 1e3},
        "clat_ns": {"percentile": {"50.000000": p50_us * 1e3, "99.000000": p99_us * 1e3,
                                   "99.900000": p999_us * 1e3}},
    }
    idle = {"io_bytes": 0, "total_ios": 0, "iops": 0, "bw_bytes": 0, "lat_ns": {"mean": 0},
            "clat_ns": {"percentile": {}}}
    reading = "read" in rw
    return {"jobs": [{"job options": {"rw": rw, "bs": bs, "iodepth": "32"}, "error": 0,
                      "read": busy if reading else idle, "write": idle if reading else busy}]}


def guest_counters(busy_jiffies, sectors, sched_ns, wall):
    # user nice system idle iowait irq softirq reads writes rsec wsec sched wall
    return (f"{busy_jiffies} 0 0 1000 0 0 0 {sectors // 8} 0 {sectors} 0 {sched_ns} {wall}")


def cpu_file(ios, bs, guest_busy_s, sched_s, qemu_s, dpuemu_s, qemu_start=1000):
    """A .cpu file whose window moved IOS I/Os of BS bytes with the given
    CPU seconds of the guest (/proc/stat and scheduler), QEMU and dpuemu."""
    sectors = int(ios * bs / 512)
    lines = ["runtime=10", "window_start:",
             f"guest_before={guest_counters(0, 0, 0, 100.0)}",
             f"host=hz={HZ} qemu={qemu_start} dpuemu=0",
             f"guest_after={guest_counters(0, 0, 0, 100.0)}",
             "window_end:"]
    end = guest_counters(int(guest_busy_s * HZ), sectors, int(sched_s * 1e9), 100.0 + WINDOW)
    lines += [f"guest_before={end}",
              f"host=hz={HZ} qemu={qemu_start + int(qemu_s * HZ)} dpuemu={int(dpuemu_s * HZ)}",
              f"guest_after={end}", "fio_running_at_end=1"]
    return "\n".join(lines) + "\n"


class ResultsDir:
    """A results directory as scripts/guest/bench.sh leaves it."""

    def __init__(self, path):
        self.path = path
        self.index = []
        with open(os.path.join(path, "guest.env"), "w") as f:
            f.write("guest_hz=100\ncpus=2\naccel=tcg\nreps=3\nruntime=10\nramp=2\n"
                    "guest_start=900.0\nguest_end=1100.5\n")

    def add(self, device, workload, rep, rw, bs, iops, sched_s, qemu_s, dpuemu_s=0.0, p99_us=500.0,
            lat_mean_us=100.0, dmesg=(), space=None, cpu=None, inflight=()):
        os.makedirs(os.path.join(self.path, device), exist_ok=True)
        base = os.path.join(self.path, device, f"{workload}.r{rep}")
        size = bench_report.parse_size(bs)
        with open(base + ".json", "w") as f:
            # fio prints notices before its JSON at times.
            f.write("fio: a notice\n")
            json.dump(fio_report(rw, bs, iops, lat_mean_us, lat_mean_us, p99_us, p99_us * 2), f)
        with open(base + ".cpu", "w") as f:
            f.write(cpu if cpu is not None else
                    cpu_file(iops * WINDOW, size, sched_s * 0.8, sched_s, qemu_s, dpuemu_s))
        with open(base + ".state", "w") as f:
            f.write("before.mem.MemFree_kb=204800\nbefore.mem.Dirty_kb=3072\n"
                    "before.loadavg=0.5 0.4 0.3\nafter.loadavg=0.6 0.4 0.3\n")
            f.writelines(f"before.inflight.{disk}={counts}\n" for disk, counts in inflight)
            f.writelines(f"dmesg={line}\n" for line in dmesg)
        if space:
            with open(base + ".space", "w") as f:
                f.write(f"logical_bytes={space[0]}\nphysical_bytes={space[1]}\n")
        self.ran(device, workload, rep, "ok")

    def ran(self, device, workload, rep, status):
        self.index.append(f"{device} {workload} {rep} {1000.0 + len(self.index)} {status}")
        with open(os.path.join(self.path, "index"), "w") as f:
            f.write("\n".join(self.index) + "\n")


class BenchReportTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = ResultsDir(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def run_report(self):
        text, results = bench_report.report(self.tmp.name)
        with open(os.path.join(self.tmp.name, "results.json")) as f:
            on_disk = json.load(f)
        self.assertEqual(len(on_disk["rows"]), len(results["rows"]))
        rows = {(r["device"], r["workload"]): r for r in results["rows"]}
        return text, results, rows

    def add_base_rows(self):
        # Interleaved as the guest runs them: each round runs every device.
        d = self.dir
        w = "randread-4k-qd32"
        for rep, (ours, theirs) in enumerate([(10000, 8000), (12000, 3000), (11000, 8200)], 1):
            d.add("dpublk", w, rep, "randread", "4k", ours, sched_s=1.0, qemu_s=15.0, dpuemu_s=2.0)
            d.add("qemu-nvme", w, rep, "randread", "4k", theirs, sched_s=1.6, qemu_s=16.0,
                  p99_us=400000.0 if theirs == 3000 else 500.0,
                  dmesg=["nvme nvme1: I/O tag 3 timeout"] if theirs == 3000 else (),
                  inflight=[("dm-0", "0 3"), ("dm-1", "1 0")] if theirs == 3000 else ())

    def test_min_median_max(self):
        self.add_base_rows()
        _, _, rows = self.run_report()
        iops = rows[("dpublk", "randread-4k-qd32")]["stats"]["iops"]
        self.assertEqual((iops["min"], iops["median"], iops["max"], iops["n"]), (10000, 11000, 12000, 3))
        theirs = rows[("qemu-nvme", "randread-4k-qd32")]["stats"]
        self.assertEqual((theirs["iops"]["min"], theirs["iops"]["median"]), (3000, 8000))
        self.assertEqual(theirs["clat_p99_us"]["max"], 400000.0)
        self.assertEqual(theirs["clat_p999_us"]["max"], 800000.0)

    def test_cpu_per_io_and_per_byte(self):
        self.add_base_rows()
        _, _, rows = self.run_report()
        rep = rows[("dpublk", "randread-4k-qd32")]["reps"][0]
        ios = 10000 * WINDOW
        self.assertAlmostEqual(rep["guest_sched_us_per_io"], 1.0 * 1e6 / ios)
        self.assertAlmostEqual(rep["guest_cpu_us_per_io"], 0.8 * 1e6 / ios)
        self.assertAlmostEqual(rep["host_qemu_us_per_io"], 15.0 * 1e6 / ios)
        self.assertAlmostEqual(rep["host_dpuemu_us_per_io"], 2.0 * 1e6 / ios)
        self.assertAlmostEqual(rep["host_cpu_us_per_io"], 17.0 * 1e6 / ios)
        self.assertAlmostEqual(rep["host_cpu_us_per_mb"], 17.0 * 1e12 / (ios * 4096))
        self.assertAlmostEqual(rep["window"]["iops"], 10000)

    def test_nvme_tcp_target_share(self):
        # The dpuemu-tcp row's .cpu files carry its in-guest target's ticks
        # (guest clock, HZ 100 in guest.env); nvmet-tcp's carry none.
        w = "randread-4k-qd32"
        for rep in (1, 2, 3):
            cpu = cpu_file(5000 * WINDOW, 4096, 0.8, 1.0, 15.0, 0.0)
            lines = cpu.splitlines()
            lines.insert(lines.index("window_end:"), "target_ticks=1000")
            lines.insert(lines.index("fio_running_at_end=1"), f"target_ticks={1000 + 30 * rep}")
            self.dir.add("dpuemu-tcp", w, rep, "randread", "4k", 5000, sched_s=1.0, qemu_s=15.0,
                         cpu="\n".join(lines) + "\n")
            self.dir.add("nvmet-tcp", w, rep, "randread", "4k", 6000, sched_s=1.2, qemu_s=15.0)
        text, results, rows = self.run_report()
        ours = rows[("dpuemu-tcp", w)]["stats"]["guest_target_us_per_io"]
        ios = 5000 * WINDOW
        self.assertAlmostEqual(ours["median"], 0.6 * 1e6 / ios)
        self.assertAlmostEqual(ours["min"], 0.3 * 1e6 / ios)
        self.assertNotIn("guest_target_us_per_io", rows[("nvmet-tcp", w)]["stats"])
        ratio = [q for q in results["comparisons"] if q["subject"] == "dpuemu-tcp"]
        self.assertEqual(len(ratio), 1)
        self.assertAlmostEqual(ratio[0]["iops"], 5000 / 6000)
        self.assertIn("| dpuemu-tcp | randread-4k-qd32 |", text)
        self.assertIn("target's own µs/IO", text)

    def test_stall_flag(self):
        self.add_base_rows()
        text, results, rows = self.run_report()
        theirs = rows[("qemu-nvme", "randread-4k-qd32")]
        self.assertEqual(theirs["stalls"], [2])
        self.assertEqual([r["stall"] for r in theirs["reps"]], [False, True, False])
        self.assertAlmostEqual(theirs["reps"][1]["iops_share_of_median"], 3000 / 8000)
        self.assertEqual(rows[("dpublk", "randread-4k-qd32")]["stalls"], [])
        # Half the median is not yet a stall; below it is.
        self.assertEqual(len(results["stalls"]), 1)
        # The index's first start is 1000.0 (ResultsDir.ran).
        self.assertEqual(results["timing"], {"setup_seconds": 100.0, "jobs_seconds": 100.5, "jobs": 6})
        self.assertIn("In the guest: 100 s from the script's start to the first job", text)
        stall = results["stalls"][0]
        self.assertEqual((stall["device"], stall["rep"], stall["seq"]), ("qemu-nvme", 2, 4))
        # What ran before it in the VM, in order.
        self.assertEqual(stall["ran_before"], ["dpublk randread-4k-qd32 #1",
                                               "qemu-nvme randread-4k-qd32 #1",
                                               "dpublk randread-4k-qd32 #2"])
        line = [x for x in text.splitlines() if x.startswith("STALL:")]
        self.assertEqual(len(line), 1)
        self.assertIn("qemu-nvme randread-4k-qd32 #2 (job 4 of the run)", line[0])
        self.assertIn("p99.9 800,000 µs", line[0])
        self.assertIn("1 new guest kernel log lines (first: nvme nvme1: I/O tag 3 timeout); the guest "
                      "before it: 200 MiB free, 3 MiB dirty, load average 0.5 0.4 0.3; requests in "
                      "flight (reads/writes) as it started: dm-0 0/3, dm-1 1/0", line[0])
        self.assertIn("the last: dpublk randread-4k-qd32 #1; qemu-nvme randread-4k-qd32 #1; "
                      "dpublk randread-4k-qd32 #2", line[0])

    def test_stall_without_stuck_requests(self):
        for rep, iops in enumerate([900, 2000, 2100], 1):
            self.dir.add("dpublk", "randread-4k-qd1", rep, "randread", "4k", iops, 1.0, 5.0)
        text, results, _ = self.run_report()
        self.assertEqual([(s["rep"], s["seq"]) for s in results["stalls"]], [(1, 1)])
        line = [x for x in text.splitlines() if x.startswith("STALL:")][0]
        self.assertIn("no requests in flight as it started; 0 jobs ran before it in this VM", line)

    def test_exactly_half_is_no_stall(self):
        for rep, iops in enumerate([1000, 2000, 2000], 1):
            self.dir.add("dpublk", "randread-4k-qd1", rep, "randread", "4k", iops, 1.0, 5.0)
        text, results, _ = self.run_report()
        self.assertEqual(results["stalls"], [])
        self.assertIn("stalls: none", text)

    def test_ratios_of_medians_and_targets(self):
        self.add_base_rows()
        text, results, _ = self.run_report()
        self.assertIn("target missed: randread-4k-qd32 dpublk vs qemu-nvme, IOPS: 11,000 vs 8,000 iops "
                      "(medians) = 1.38x (target >= 1.5x; 1.22-4.00x over the repetitions; issue 4/15)",
                      text.splitlines())
        self.assertIn("randwrite-4k-qd32 dpublk vs qemu-nvme iops (issue 15)",
                      [x for x in text.splitlines() if x.startswith("targets not evaluated")][0])
        ratio = [c for c in results["comparisons"]
                 if (c["subject"], c["baseline"], c["workload"]) == ("dpublk", "qemu-nvme", "randread-4k-qd32")]
        self.assertEqual(len(ratio), 1)
        self.assertAlmostEqual(ratio[0]["iops"], 11000 / 8000)
        # Medians of the per-I/O figures: dpublk 1.0 s over 110,000 I/Os,
        # qemu-nvme 1.6 s over 80,000.
        self.assertAlmostEqual(ratio[0]["guest_sched_us_per_io"], (1e6 / 110000) / (1.6e6 / 80000))
        targets = {(t["workload"], t["metric"], t["baseline"]): t for t in results["targets"]}
        iops = targets[("randread-4k-qd32", "iops", "qemu-nvme")]
        self.assertEqual(iops["verdict"], "missed")
        self.assertAlmostEqual(iops["measured"], 11000 / 8000)
        self.assertAlmostEqual(iops["ratio_range"][0], 10000 / 8200)
        self.assertAlmostEqual(iops["ratio_range"][1], 12000 / 3000)
        self.assertEqual(iops["issues"], [4, 15])
        cpu = targets[("randread-4k-qd32", "guest_sched_us_per_io", "qemu-nvme")]
        self.assertEqual(cpu["verdict"], "met")
        host = targets[("randread-4k-qd32", "host_cpu_us_per_io", "qemu-nvme")]
        # 17 s over 110,000 I/Os against 16 s over 80,000: met.
        self.assertAlmostEqual(host["measured"], (17e6 / 110000) / (16e6 / 80000))
        self.assertEqual(host["verdict"], "met")
        missing = targets[("randwrite-4k-qd32", "iops", "qemu-nvme")]
        self.assertEqual(missing["verdict"], "not evaluated")
        self.assertIsNone(missing["measured"])
        for t in results["targets"]:
            self.assertIn(t["verdict"], ("met", "missed", "not evaluated"))
            self.assertIn("goal", t)

    def test_cross_stack_cpu_per_byte(self):
        w = "write-128k-qd8"
        for rep in (1, 2, 3):
            self.dir.add("dpublk-raid6", w, rep, "write", "128k", 400, sched_s=0.5, qemu_s=12.0,
                         dpuemu_s=3.0)
            self.dir.add("md-raid6", w, rep, "write", "128k", 800, sched_s=4.0, qemu_s=19.0)
        text, results, _ = self.run_report()
        self.assertEqual(len(results["cross_stack"]), 1)
        c = results["cross_stack"][0]
        moved_ours, moved_md = 400 * WINDOW * 131072, 800 * WINDOW * 131072
        self.assertAlmostEqual(c["host_cpu_us_per_mb"], (15.0e12 / moved_ours) / (19.0e12 / moved_md))
        self.assertAlmostEqual(c["guest_sched_us_per_mb"], (0.5e12 / moved_ours) / (4.0e12 / moved_md))
        self.assertIn("| dpublk-raid6 / md-raid6 | write-128k-qd8 | 0.50x |", text)
        self.assertIn("dpuemu runs natively", text)
        targets = {(t["subject"], t["workload"], t["metric"]): t for t in results["targets"]}
        self.assertEqual(targets[("dpublk-raid6", w, "iops")]["verdict"], "missed")
        self.assertEqual(targets[("dpublk-ec", w, "iops")]["verdict"], "not evaluated")

    def test_space_saved_median(self):
        w = "write-128k-qd8-dedup"
        for rep, (ours, theirs) in enumerate([(500, 600), (400, 500), (450, 520)], 1):
            self.dir.add("dpublk-reduce", w, rep, "write", "128k", 3000, 1.0, 10.0, 4.0,
                         space=(1000, ours))
            self.dir.add("dm-vdo", w, rep, "write", "128k", 1000, 3.0, 12.0, space=(1000, theirs))
        _, results, rows = self.run_report()
        saved = rows[("dpublk-reduce", w)]["stats"]["space_saved"]
        self.assertAlmostEqual(saved["median"], 0.55)
        self.assertAlmostEqual(saved["min"], 0.5)
        t = [t for t in results["targets"] if t["metric"] == "space_saved"][0]
        self.assertAlmostEqual(t["measured"], 0.55 / 0.48)
        self.assertEqual(t["verdict"], "met")
        thr = [t for t in results["targets"] if t["metric"] == "mb_per_s" and t["baseline"] == "dm-vdo"][0]
        self.assertAlmostEqual(thr["measured"], 3.0)
        self.assertEqual(thr["verdict"], "met")

    def test_failed_repetition_counts_in_run_order(self):
        d = self.dir
        d.add("dpublk", "randread-4k-qd1", 1, "randread", "4k", 1000, 1.0, 5.0)
        d.ran("dpublk", "randread-4k-qd1", 2, "fio-failed")
        d.add("dpublk", "randread-4k-qd1", 3, "randread", "4k", 1100, 1.0, 5.0)
        text, results, rows = self.run_report()
        row = rows[("dpublk", "randread-4k-qd1")]
        self.assertEqual([r["rep"] for r in row["reps"]], [1, 3])
        self.assertEqual(row["reps"][1]["seq"], 3)
        self.assertEqual(row["reps"][1]["ran_before"], ["dpublk randread-4k-qd1 #1",
                                                        "dpublk randread-4k-qd1 #2 (fio-failed)"])
        self.assertEqual(results["failed"], [{"seq": 2, "job": "dpublk randread-4k-qd1 #2",
                                              "status": "fio-failed"}])
        self.assertIn("failed repetitions (no figures): job 2 dpublk randread-4k-qd1 #2 (fio-failed)",
                      text)

    def test_broken_repetition_is_left_out(self):
        self.add_base_rows()
        # A fourth round whose CPU file lost its second sample.
        self.dir.add("dpublk", "randread-4k-qd32", 4, "randread", "4k", 99999, 1.0, 1.0,
                     cpu="runtime=10\nwindow_start:\nguest_before=1 2 3\n")
        _, results, rows = self.run_report()
        self.assertEqual(rows[("dpublk", "randread-4k-qd32")]["stats"]["iops"]["n"], 3)
        self.assertEqual(rows[("dpublk", "randread-4k-qd32")]["stats"]["iops"]["max"], 12000)
        self.assertEqual([(f["seq"], f["job"]) for f in results["failed"]],
                         [(7, "dpublk randread-4k-qd32 #4")])
        self.assertTrue(results["failed"][0]["status"].startswith("unreadable: "))

    def test_host_window(self):
        # QEMU uses 1.2 CPUs, everything on the host 1.7, 0.1 stolen: with
        # dpuemu's 0.2, other processes used 0.3 CPUs.
        samples = [(1000.0 + t, 170 * t, 10 * t, 30 * t, 1.5 + t / 10, 120 * t) for t in range(20)]
        h0 = {"hz": HZ, "qemu": 120 * 5 + 60, "dpuemu": 0}
        h1 = {"hz": HZ, "qemu": 120 * 15 + 60, "dpuemu": 200}
        w = bench_report.host_window(samples, h0, h1, HZ)
        self.assertAlmostEqual(w["start"], 1005.5)
        self.assertAlmostEqual(w["seconds"], 10.0)
        self.assertAlmostEqual(w["other_cpus"], 0.3)
        self.assertAlmostEqual(w["steal_cpus"], 0.1)
        self.assertAlmostEqual(w["loadavg_max"], 1.5 + 16 / 10)
        # Outside the series (QEMU's ticks never reached): no figure.
        self.assertIsNone(bench_report.host_window(samples, h0, {**h1, "qemu": 10**9}, HZ))
        self.assertIsNone(bench_report.host_window([], h0, h1, HZ))

    def test_host_samples_end_to_end(self):
        with open(os.path.join(self.tmp.name, "host-samples"), "w") as f:
            for t in range(40):
                f.write(f"{2000.0 + t} {200 * t} 0 0 2.50 {1000 + 150 * t}\n")
            f.write("garbage line\n")
        self.dir.add("dpublk", "randread-4k-qd1", 1, "randread", "4k", 1000, 1.0, 15.0, 1.0)
        _, results, rows = self.run_report()
        rep = rows[("dpublk", "randread-4k-qd1")]["reps"][0]
        # Window: QEMU 1000 -> 2500 ticks = samples 0 -> 10 s; 2000 busy
        # ticks, 1500 QEMU's and 100 dpuemu's: 0.4 CPUs of other work.
        self.assertAlmostEqual(rep["host_window"]["seconds"], 10.0)
        self.assertAlmostEqual(rep["host_other_cpus"], 0.4)

    def test_kvm_note_and_empty(self):
        _, results, _ = self.run_report()
        self.assertEqual(results["rows"], [])
        self.assertEqual(len(results["targets"]), len(bench_report.TARGETS))


if __name__ == "__main__":
    unittest.main()
