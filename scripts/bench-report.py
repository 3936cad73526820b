#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turns a `make bench` results directory into results.json and results.md.

    bench-report.py DIR

DIR holds what scripts/guest/bench.sh wrote: an index of the repetitions in
the order they ran, and per repetition <device>/<workload>.r<N>.json (fio's
JSON report), .cpu (guest and host CPU counters at both ends of the measured
window), .state (guest memory, load and kernel log around it) and, for the
data-reduction rows, .space; and what scripts/bench.sh wrote on the host
(host.env, host-samples). Prints the markdown; see
Documentation/benchmarks.rst for the method.
"""
import json
import os
import statistics
import sys

# A repetition whose IOPS are below this share of its row's median is
# flagged as a stall.
STALL_SHARE = 0.5

# Every pair of rows whose ratios are shown: (subject, baseline), on the
# workloads both ran. The data-service rows against the Linux stack doing
# the same work in the guest, and each thin stack with 10 snapshots against
# itself with none (the snapshot cost).
COMPARISONS = [
    ("dpublk", "qemu-nvme"),
    ("dpublk", "null_blk"),
    ("dpublk-raid6", "md-raid6"),
    ("dpublk-ec", "md-raid6"),
    ("dpublk-thin", "dm-thin"),
    ("dpublk-thin-snap10", "dm-thin-snap10"),
    ("dpublk-thin-snap10", "dpublk-thin"),
    ("dm-thin-snap10", "dm-thin"),
    ("dpublk-reduce", "dm-vdo"),
    ("dpublk-crypt", "dm-crypt"),
    ("dpuemu-tcp", "nvmet-tcp"),
]

# The comparisons of dpublk's data services (run by dpuemu on the host) with
# a Linux stack doing the same work in the guest's kernel. Under TCG the
# guest's code is emulated and dpuemu's native, so these rows also get a
# table of CPU per byte on both sides.
CROSS_STACK = [
    ("dpublk-raid6", "md-raid6"),
    ("dpublk-ec", "md-raid6"),
    ("dpublk-thin", "dm-thin"),
    ("dpublk-thin-snap10", "dm-thin-snap10"),
    ("dpublk-reduce", "dm-vdo"),
    ("dpublk-crypt", "dm-crypt"),
]


def goal(issues, text, subject, baseline, workload, metric, op, want):
    """One target of the project: the ratio of the medians of METRIC,
    SUBJECT over BASELINE on WORKLOAD, compared with WANT by OP (">=" or
    "<=")."""
    return {"issues": issues, "goal": text, "subject": subject, "baseline": baseline,
            "workload": workload, "metric": metric, "op": op, "want": want}


# The targets the issues set, each evaluated on the medians of one run and
# written to results.json's `targets` with its verdict. A new goal is one
# more entry.
TARGETS = [
    goal([4, 15], "IOPS", "dpublk", "qemu-nvme", "randread-4k-qd32",
         "iops", ">=", 1.5),
    goal([15], "IOPS", "dpublk", "qemu-nvme", "randwrite-4k-qd32",
         "iops", ">=", 1.3),
    goal([15], "MB/s", "dpublk", "qemu-nvme", "read-128k-qd8",
         "mb_per_s", ">=", 1.2),
    goal([15], "mean latency", "dpublk", "qemu-nvme", "randread-4k-qd1",
         "lat_mean_us", "<=", 1.0),
] + [
    goal([15], what, "dpublk", "qemu-nvme", w, metric, "<=", 1.0)
    for w in ("randread-4k-qd32", "randwrite-4k-qd32", "read-128k-qd8", "randread-4k-qd1")
    for what, metric in (("guest CPU per I/O (sched)", "guest_sched_us_per_io"),
                         ("total host CPU per I/O", "host_cpu_us_per_io"))
] + [
    goal([15], "IOPS against the guest block layer's ceiling", "dpublk",
         "null_blk", "randread-4k-qd32", "iops", ">=", 0.6),
] + [
    # Issue 6: guest CPU per I/O of dpublk's RAID6 and EC at most 0.2 times
    # md RAID6's, with at least md's throughput.
    goal([6], what, subject, "md-raid6", w, metric, op, want)
    for subject in ("dpublk-raid6", "dpublk-ec")
    for w in ("write-128k-qd8", "read-128k-qd8", "randwrite-4k-qd32")
    for what, metric, op, want in (("guest CPU per I/O (sched)", "guest_sched_us_per_io", "<=", 0.2),
                                   ("IOPS", "iops", ">=", 1.0))
] + [
    # Issue 8: dedup + compression saves at least the space dm-vdo saves,
    # at no less than twice its write throughput.
    goal([8], "space saved", "dpublk-reduce", "dm-vdo", "write-128k-qd8-dedup",
         "space_saved", ">=", 1.0),
    goal([8], "write MB/s", "dpublk-reduce", "dm-vdo", "write-128k-qd8-dedup",
         "mb_per_s", ">=", 2.0),
]

# Guest /proc/stat fields as scripts/guest/bench.sh records them, followed by
# the device's completed reads and writes and its sectors read and written,
# the scheduler's task run time (ns) and the wall clock (s).
GUEST_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "reads", "writes",
                "read_sectors", "write_sectors", "sched_ns", "wall")
BUSY = ("user", "nice", "system", "irq", "softirq")

# The per-repetition figures summarised as min / median / max per row.
METRICS = ("iops", "mb_per_s", "lat_mean_us", "clat_p50_us", "clat_p99_us", "clat_p999_us",
           "guest_cpu_us_per_io", "guest_sched_us_per_io", "host_qemu_us_per_io",
           "host_dpuemu_us_per_io", "host_cpu_us_per_io", "guest_cpu_us_per_mb",
           "guest_sched_us_per_mb", "host_qemu_us_per_mb", "host_dpuemu_us_per_mb",
           "host_cpu_us_per_mb", "space_saved", "host_other_cpus", "guest_target_us_per_io")


def read_env(path):
    env = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    env[key] = value
    return env


def load_fio(path):
    # fio may print notices before its JSON.
    with open(path) as f:
        text = f.read()
    start = text.find("{")
    if start < 0:
        raise ValueError(f"{path}: no JSON report")
    return json.loads(text[start:])


def parse_cpu(path):
    """Returns the guest counters and host ticks at the window's two ends.

    Each end has guest counters taken just before and just after the host
    sample; their midpoint stands for the moment of the host sample.
    """
    ends = []
    current = None
    running = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.endswith(":"):
                current = {}
                ends.append(current)
                continue
            key, _, value = line.partition("=")
            if key == "fio_running_at_end":
                running = value == "1"
            elif current is not None and key in ("guest_before", "guest_after"):
                fields = value.split()
                if len(fields) != len(GUEST_FIELDS):
                    raise ValueError(f"{path}: {key} has {len(fields)} fields, not {len(GUEST_FIELDS)}")
                current[key] = dict(zip(GUEST_FIELDS, map(float, fields)))
            elif current is not None and key == "host":
                current["host"] = {k: int(v) for k, v in (w.split("=") for w in value.split())}
            elif current is not None and key == "target_ticks":
                # The NVMe/TCP rows' target process in the guest (dpuemu):
                # its utime + stime in guest clock ticks.
                current["target_ticks"] = int(value)
    required = {"guest_before", "guest_after", "host"}
    if len(ends) != 2 or any(not required <= set(e) for e in ends):
        raise ValueError(f"{path}: expected two complete samples, found {len(ends)}")
    result = []
    for end in ends:
        guest = {k: (end["guest_before"][k] + end["guest_after"][k]) / 2 for k in GUEST_FIELDS}
        if "target_ticks" in end:
            guest["target_ticks"] = float(end["target_ticks"])
        result.append((guest, end["host"]))
    return result, running


def parse_state(path):
    """The guest state before and after a repetition: key=value lines, the
    kernel log lines that appeared during it under `dmesg`."""
    state = {"dmesg": []}
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if not sep:
                continue
            if key == "dmesg":
                state["dmesg"].append(value)
            else:
                state[key] = value
    return state


def parse_host_samples(path):
    """scripts/bench.sh's once-a-second host samples: (time, busy ticks,
    steal ticks, idle ticks, load average, QEMU's ticks)."""
    samples = []
    if not os.path.exists(path):
        return samples
    with open(path) as f:
        for line in f:
            w = line.split()
            if len(w) != 6:
                continue
            try:
                samples.append((float(w[0]), int(w[1]), int(w[2]), int(w[3]), float(w[4]), int(w[5])))
            except ValueError:
                continue
    return samples


def parse_size(text):
    """fio's sizes: a number with an optional k/m/g suffix, base 1024."""
    text = text.strip().lower().rstrip("b")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("kmg")) * scale


def interpolate(xs, ys, x):
    """y at x on the polyline through (xs, ys); xs ascending."""
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            if xs[i + 1] == xs[i]:
                return ys[i]
            return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])
    return None


def host_time_of(samples, qemu_ticks):
    """The host time at which QEMU had used QEMU_TICKS, from the host
    samples (its ticks only grow), or None outside the series."""
    for a, b in zip(samples, samples[1:]):
        if a[5] <= qemu_ticks <= b[5] and b[5] > a[5]:
            return a[0] + (b[0] - a[0]) * (qemu_ticks - a[5]) / (b[5] - a[5])
    return None


def host_window(samples, h0, h1, hz):
    """What the rest of the host did during a window whose ends the agent
    sampled as H0 and H1: CPUs busy with processes other than QEMU and
    dpuemu, CPUs stolen by the hypervisor, the highest load average."""
    t0, t1 = host_time_of(samples, h0["qemu"]), host_time_of(samples, h1["qemu"])
    if t0 is None or t1 is None or t1 <= t0:
        return None
    times = [s[0] for s in samples]
    busy = [interpolate(times, [s[1] for s in samples], t) for t in (t0, t1)]
    steal = [interpolate(times, [s[2] for s in samples], t) for t in (t0, t1)]
    if None in busy or None in steal:
        return None
    ours = (h1["qemu"] - h0["qemu"]) + (h1["dpuemu"] - h0["dpuemu"])
    seconds = t1 - t0
    loads = [s[4] for s in samples if t0 - 1 <= s[0] <= t1 + 1]
    return {
        "start": t0,
        "seconds": seconds,
        "other_cpus": max(0.0, (busy[1] - busy[0] - ours) / hz / seconds),
        "steal_cpus": (steal[1] - steal[0]) / hz / seconds,
        "loadavg_max": max(loads) if loads else None,
    }


def derive(fio, cpu, guest_hz, cpus):
    """The figures of one repetition from fio's report and the window's
    counters."""
    job = fio["jobs"][0]
    opts = job["job options"]
    dirs = [d for d in ("read", "write") if job[d]["io_bytes"] > 0]
    main = max(dirs, key=lambda d: job[d]["total_ios"]) if dirs else "read"
    pct = job[main]["clat_ns"].get("percentile", {})
    (g0, h0), (g1, h1) = cpu[0]
    # I/Os of the workload's size: the block layer may split a large I/O
    # (at a device's max_sectors_kb) or merge small ones, so the device's
    # request count could be off; its byte count is not.
    requests = (g1["reads"] - g0["reads"]) + (g1["writes"] - g0["writes"])
    moved = 512 * ((g1["read_sectors"] - g0["read_sectors"]) + (g1["write_sectors"] - g0["write_sectors"]))
    io_size = parse_size(opts.get("bs", "0"))
    ios = moved / io_size if io_size else 0
    busy = sum(g1[k] - g0[k] for k in BUSY)
    total = sum(g1[k] - g0[k] for k in GUEST_FIELDS[:7])
    window = g1["wall"] - g0["wall"]
    sched = (g1["sched_ns"] - g0["sched_ns"]) / 1e9
    hz = h0["hz"]
    qemu = (h1["qemu"] - h0["qemu"]) / hz
    dpuemu = (h1["dpuemu"] - h0["dpuemu"]) / hz

    target = None
    if "target_ticks" in g0 and "target_ticks" in g1:
        target = (g1["target_ticks"] - g0["target_ticks"]) / guest_hz

    def per_io(seconds):
        return seconds * 1e6 / ios if ios > 0 else None

    def per_mb(seconds):
        # µs of CPU per MB (10^6 bytes) moved.
        return seconds * 1e12 / moved if moved > 0 else None

    return {
        "rw": opts.get("rw"),
        "bs": opts.get("bs"),
        "iodepth": int(opts.get("iodepth", 1)),
        "iops": sum(job[d]["iops"] for d in ("read", "write")),
        "mb_per_s": sum(job[d]["bw_bytes"] for d in ("read", "write")) / 1e6,
        "lat_mean_us": job[main]["lat_ns"]["mean"] / 1e3,
        "clat_p50_us": pct.get("50.000000", 0) / 1e3,
        "clat_p99_us": pct.get("99.000000", 0) / 1e3,
        "clat_p999_us": pct.get("99.900000", 0) / 1e3,
        "fio_error": job["error"],
        "window": {
            "seconds": window,
            "fio_running_at_end": cpu[1],
            "bytes": moved,
            "io_size": io_size,
            "ios": ios,
            "device_requests": requests,
            "iops": ios / window if window > 0 else None,
            "guest_busy_seconds": busy / guest_hz,
            "guest_busy_cpus": busy / guest_hz / window if window > 0 else None,
            # /proc/stat's idle time is exact, its busy time sampled at each
            # tick: ticks a TCG vCPU misses while QEMU is descheduled
            # show as a sum short of the wall clock.
            "guest_stat_seconds_per_cpu": total / guest_hz / cpus,
            "guest_sched_seconds": sched,
            "host_qemu_seconds": qemu,
            "host_dpuemu_seconds": dpuemu,
        },
        "guest_cpu_us_per_io": per_io(busy / guest_hz),
        "guest_sched_us_per_io": per_io(sched),
        "host_qemu_us_per_io": per_io(qemu),
        "host_dpuemu_us_per_io": per_io(dpuemu),
        "host_cpu_us_per_io": per_io(qemu + dpuemu),
        "guest_cpu_us_per_mb": per_mb(busy / guest_hz),
        "guest_sched_us_per_mb": per_mb(sched),
        "host_qemu_us_per_mb": per_mb(qemu),
        "host_dpuemu_us_per_mb": per_mb(dpuemu),
        "host_cpu_us_per_mb": per_mb(qemu + dpuemu),
        "guest_target_us_per_io": per_io(target) if target is not None else None,
    }


def summary(values):
    """min / median / max of the values that exist, with their count."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def median(row, metric):
    s = row["stats"].get(metric) if row else None
    return s["median"] if s else None


def ratio(a, b):
    return a / b if a is not None and b else None


def read_index(top):
    """The repetitions in run order, failed ones included: (device,
    workload, rep, started, status)."""
    path = os.path.join(top, "index")
    jobs = []
    if not os.path.exists(path):
        return jobs
    with open(path) as f:
        for line in f:
            w = line.split()
            try:
                if len(w) == 5:
                    jobs.append((w[0], w[1], int(w[2]), float(w[3]), w[4]))
                elif len(w) == 2:
                    # A run from before repetitions: one per job, no suffix.
                    jobs.append((w[0], w[1], 0, None, "ok"))
                elif w:
                    raise ValueError("not 5 fields")
            except ValueError as e:
                print(f"bench-report: index: {line.strip()!r}: {e}", file=sys.stderr)
    return jobs


def label(device, workload, rep):
    return f"{device} {workload} #{max(rep, 1)}"


def load_reps(top, jobs, guest_hz, cpus, host_samples):
    """The repetitions that produced figures, each numbered by its place in
    the run (JOBS, from the index), and those whose files could not be
    read."""
    reps, unreadable = [], []
    for seq, (device, workload, rep, started, status) in enumerate(jobs, 1):
        if status != "ok":
            continue
        base = os.path.join(top, device, workload + (f".r{rep}" if rep else ""))
        try:
            fio = load_fio(base + ".json")
            cpu = parse_cpu(base + ".cpu")
            r = derive(fio, cpu, guest_hz, cpus)
        except (OSError, ValueError, KeyError, IndexError) as e:
            print(f"bench-report: {device} {workload} #{rep}: {e}", file=sys.stderr)
            unreadable.append({"seq": seq, "job": label(device, workload, rep),
                               "status": f"unreadable: {e}"})
            continue
        (_, h0), (_, h1) = cpu[0]
        r = {"device": device, "workload": workload, "rep": max(rep, 1), "seq": seq,
             "started": started, **r}
        r["host_window"] = host_window(host_samples, h0, h1, h0["hz"])
        r["host_other_cpus"] = r["host_window"]["other_cpus"] if r["host_window"] else None
        r["guest_state"] = parse_state(base + ".state")
        space = read_env(base + ".space")
        r["space_saved"] = None
        if space.get("logical_bytes") and space.get("physical_bytes"):
            logical, physical = int(space["logical_bytes"]), int(space["physical_bytes"])
            r["space"] = {"logical_bytes": logical, "physical_bytes": physical,
                          "saved": 1 - physical / logical if logical else None, "raw": space}
            r["space_saved"] = r["space"]["saved"]
        r["fio"] = fio
        reps.append(r)
    return reps, unreadable


def build_rows(reps, jobs):
    """Groups the repetitions into rows (device, workload), in the order the
    devices were set up and the workloads ran; marks stalls and the jobs
    (JOBS, from the index, failed ones too) that ran before each
    repetition."""
    devices = list(dict.fromkeys(r["device"] for r in reps))
    workloads = list(dict.fromkeys(r["workload"] for r in reps))
    rows = {}
    for r in reps:
        rows.setdefault((r["device"], r["workload"]), []).append(r)
    out = []
    for key in sorted(rows, key=lambda k: (devices.index(k[0]), workloads.index(k[1]))):
        rs = rows[key]
        stats = {m: s for m in METRICS if (s := summary(r.get(m) for r in rs))}
        med = stats["iops"]["median"] if "iops" in stats else None
        for r in rs:
            r["iops_share_of_median"] = ratio(r["iops"], med)
            r["stall"] = bool(med and r["iops"] < STALL_SHARE * med)
        out.append({"device": key[0], "workload": key[1], "stats": stats,
                    "stalls": [r["rep"] for r in rs if r["stall"]], "reps": rs})
    # Run order: every repetition knows the jobs that ran before it in this VM.
    order = [label(d, w, n) + ("" if status == "ok" else f" ({status})")
             for d, w, n, _, status in jobs]
    for r in reps:
        r["ran_before"] = order[:r["seq"] - 1]
    return out


def compare(by_key, subject, baseline, workload):
    s, b = by_key.get((subject, workload)), by_key.get((baseline, workload))
    if not s or not b:
        return None
    out = {"subject": subject, "baseline": baseline, "workload": workload}
    for m in ("iops", "mb_per_s", "lat_mean_us", "guest_cpu_us_per_io", "guest_sched_us_per_io",
              "host_cpu_us_per_io", "guest_sched_us_per_mb", "host_cpu_us_per_mb"):
        out[m] = ratio(median(s, m), median(b, m))
    return out


def evaluate(target, by_key):
    """A target's verdict from the medians of its two rows."""
    t = dict(target)
    s, b = by_key.get((t["subject"], t["workload"])), by_key.get((t["baseline"], t["workload"]))
    sv, bv = median(s, t["metric"]), median(b, t["metric"])
    measured = ratio(sv, bv)
    want = f"{t['op']} {t['want']:g}x"
    if measured is None:
        t.update({"measured": None, "verdict": "not evaluated"})
        t["line"] = (f"{t['workload']} {t['subject']} vs {t['baseline']} {t['metric']} "
                     f"(issue {'/'.join(map(str, t['issues']))})")
        return t
    met = measured >= t["want"] if t["op"] == ">=" else measured <= t["want"]
    digits = {"iops": 0, "space_saved": 3}.get(t["metric"], 1)
    ss, bs = s["stats"][t["metric"]], b["stats"][t["metric"]]
    # The ratio's spread over the repetitions: worst and best pairing.
    spread = sorted(x for x in (ratio(ss["min"], bs["max"]), ratio(ss["max"], bs["min"]))
                    if x is not None)
    t.update({"measured": measured, "subject_value": sv, "baseline_value": bv,
              "ratio_range": spread, "verdict": "met" if met else "missed"})
    t["line"] = (f"target {t['verdict']}: {t['workload']} {t['subject']} vs {t['baseline']}, "
                 f"{t['goal']}: {fmt(sv, digits)} vs {fmt(bv, digits)} {t['metric']} (medians) = "
                 f"{measured:.2f}x (target {want}"
                 + (f"; {spread[0]:.2f}-{spread[-1]:.2f}x over the repetitions" if spread else "")
                 + f"; issue {'/'.join(map(str, t['issues']))})")
    return t


def fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def cell(stats, metric, digits=0, scale=1.0):
    """'median (min-max)' of a row's metric, or the median alone with one
    repetition."""
    s = stats.get(metric)
    if not s:
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"] * scale, digits)
    return (f"{fmt(s['median'] * scale, digits)} ({fmt(s['min'] * scale, digits)}–"
            f"{fmt(s['max'] * scale, digits)})")


def tcg_note(accel):
    if accel == "kvm":
        return ("The guest ran under KVM: its code ran natively, like dpuemu's; host QEMU CPU is "
                "device emulation and vCPU time.")
    return ("Under TCG the guest's code (fio, io_uring, the block layer, the drivers, and md, "
            "dm-thin, dm-vdo and dm-crypt in the Linux rows) is emulated by QEMU's vCPU threads, "
            "while dpuemu runs natively on the host; host QEMU CPU contains the guest's. Ratios "
            "of a dpublk row to a Linux stack compare emulated code with native code.")


def render(meta, rows, comparisons, cross, targets, idle, reps, failed):
    host, guest = meta["host"], meta["guest"]
    md = []
    md.append(f"fio, io_uring, direct=1, 1 job; {guest.get('reps', '?')} repetitions of "
              f"{guest.get('runtime', '?')} s measured after {guest.get('ramp', '?')} s ramp "
              f"(data-service rows: {guest.get('service_runtime', '?')} s); guest "
              f"{guest.get('cpus', '?')} vCPUs ({guest.get('accel', '?')}), kernel "
              f"{guest.get('kernel', '?')}; devices {host.get('size', '?')} (data-service rows: "
              f"{host.get('service_size', '?')}); {host.get('ssds', '?')} SSD functions; host "
              f"{host.get('host_cpu', '?')}, {host.get('host_cpus', '?')} CPUs, load average "
              f"{host.get('loadavg_start', '?')} at the start, {host.get('loadavg_end', '?')} at "
              f"the end; started {host.get('started', '?')}, VM run {host.get('wall_seconds', '?')} "
              f"s; {host.get('git', '?')}")
    timing = meta.get("timing")
    if timing:
        md.append("")
        md.append(f"In the guest: {timing['setup_seconds']:,.0f} s from the script's start to the "
                  f"first job (setting up every row), {timing['jobs_seconds']:,.0f} s from the first "
                  f"job's start to the end of the last, {timing['jobs']} repetitions.")
    md.append("")
    md.append(tcg_note(guest.get("accel")))
    md.append("")
    md.append("Cells: median (min–max) over the repetitions; ratios are of medians.")
    if idle:
        md.append("")
        md.append(f"Guest CPU with no job running (every device set up, {idle['seconds']:.0f} s): "
                  f"{idle['guest_busy_cpus'] * 1000:,.0f} ms/s (/proc/stat), "
                  f"{idle['guest_sched_cpus'] * 1000:,.0f} ms/s (sched); every window holds it, "
                  "so it weighs most on the rows with the fewest I/Os per second.")
    md.append("")
    md.append("| device | workload | n | IOPS | MB/s | mean lat µs | p99 clat µs | p99.9 clat µs "
              "| guest sched µs/IO | guest CPU µs/IO | host QEMU µs/IO | host dpuemu µs/IO "
              "| host total µs/IO | stalls |")
    md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
              "| ---: | --- |")
    for r in rows:
        st = r["stats"]
        md.append(f"| {r['device']} | {r['workload']} | {len(r['reps'])} | {cell(st, 'iops')} "
                  f"| {cell(st, 'mb_per_s', 1)} | {cell(st, 'lat_mean_us', 1)} "
                  f"| {cell(st, 'clat_p99_us', 1)} | {cell(st, 'clat_p999_us', 1)} "
                  f"| {cell(st, 'guest_sched_us_per_io', 1)} | {cell(st, 'guest_cpu_us_per_io', 1)} "
                  f"| {cell(st, 'host_qemu_us_per_io', 1)} | {cell(st, 'host_dpuemu_us_per_io', 1)} "
                  f"| {cell(st, 'host_cpu_us_per_io', 1)} "
                  f"| {', '.join('#' + str(n) for n in r['stalls']) or '-'} |")
    if comparisons:
        md.append("")
        md.append("| ratio of medians | workload | IOPS | guest sched per I/O | guest CPU per I/O "
                  "| host total CPU per I/O |")
        md.append("| --- | --- | ---: | ---: | ---: | ---: |")
        for q in comparisons:
            md.append(f"| {q['subject']} / {q['baseline']} | {q['workload']} | {fmt(q['iops'], 2)} "
                      f"| {fmt(q['guest_sched_us_per_io'], 2)} | {fmt(q['guest_cpu_us_per_io'], 2)} "
                      f"| {fmt(q['host_cpu_us_per_io'], 2)} |")
    if cross:
        md.append("")
        md.append("CPU per byte of the cross-stack rows (µs per MB moved, medians): the guest's "
                  "own CPU beside the host's total: QEMU, which under TCG includes the emulated "
                  "guest, plus dpuemu, which runs natively both the dpublk rows' data services "
                  "and the local SSDs every row's data lands on (the Linux stacks' too).")
        md.append("")
        md.append("| device | workload | MB/s | guest sched µs/MB | host QEMU µs/MB "
                  "| host dpuemu µs/MB | host total µs/MB |")
        md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for c in cross:
            for r in (c["subject_row"], c["baseline_row"]):
                st = r["stats"]
                md.append(f"| {r['device']} | {c['workload']} | {cell(st, 'mb_per_s', 1)} "
                          f"| {cell(st, 'guest_sched_us_per_mb')} | {cell(st, 'host_qemu_us_per_mb')} "
                          f"| {cell(st, 'host_dpuemu_us_per_mb')} | {cell(st, 'host_cpu_us_per_mb')} |")
            md.append(f"| {c['subject']} / {c['baseline']} | {c['workload']} "
                      f"| {fmt(c['mb_per_s'], 2)}x | {fmt(c['guest_sched_us_per_mb'], 2)}x | | "
                      f"| {fmt(c['host_cpu_us_per_mb'], 2)}x |")
    tcp = [r for r in rows if r["device"] in ("dpuemu-tcp", "nvmet-tcp")]
    if tcp:
        md.append("")
        md.append("NVMe/TCP (issue 17): the guest's nvme-tcp initiator against dpuemu's target and "
                  "against Linux's nvmet-tcp, both running in the guest on its loopback and serving "
                  "the same image file on a tmpfs, so both sides of each connection are guest CPU "
                  "(emulated alike under TCG). The target's own share is shown where it is one "
                  "process (dpuemu, its utime + stime in the guest); nvmet-tcp's runs in kernel "
                  "workers and is not separable from the initiator's, so that cell is empty. Host "
                  "dpuemu (the vfio-user accelerator) takes no part in these rows.")
        md.append("")
        md.append("| device | workload | IOPS | MB/s | p99 clat µs | guest sched µs/IO (both sides) "
                  "| target's own µs/IO | host QEMU µs/IO |")
        md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in tcp:
            st = r["stats"]
            md.append(f"| {r['device']} | {r['workload']} | {cell(st, 'iops')} | {cell(st, 'mb_per_s', 1)} "
                      f"| {cell(st, 'clat_p99_us', 1)} | {cell(st, 'guest_sched_us_per_io', 1)} "
                      f"| {cell(st, 'guest_target_us_per_io', 1)} | {cell(st, 'host_qemu_us_per_io', 1)} |")
    spaced = [r for r in rows if "space_saved" in r["stats"]]
    if spaced:
        md.append("")
        md.append("| device | workload | space saved % |")
        md.append("| --- | --- | ---: |")
        for r in spaced:
            md.append(f"| {r['device']} | {r['workload']} | {cell(r['stats'], 'space_saved', 1, 100)} |")
    md.append("")
    md.append(f"Repetitions in the order they ran in the VM (a stall is below "
              f"{STALL_SHARE:g} of its row's median IOPS; host other = CPUs busy on the host "
              "with processes other than QEMU and dpuemu during the window):")
    md.append("")
    md.append("| # | device | workload | rep | IOPS | of median | p99 µs | p99.9 µs | host other CPUs "
              "| host steal CPUs | new guest log lines | |")
    md.append("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in sorted(reps, key=lambda r: r["seq"]):
        hw = r["host_window"] or {}
        gs = r["guest_state"] or {"dmesg": []}
        md.append(f"| {r['seq']} | {r['device']} | {r['workload']} | {r['rep']} | {fmt(r['iops'])} "
                  f"| {fmt(r['iops_share_of_median'], 2)} | {fmt(r['clat_p99_us'], 1)} "
                  f"| {fmt(r['clat_p999_us'], 1)} | {fmt(hw.get('other_cpus'), 2)} "
                  f"| {fmt(hw.get('steal_cpus'), 2)} | {len(gs['dmesg'])} "
                  f"| {'STALL' if r['stall'] else ''} |")
    for r in sorted(reps, key=lambda r: r["seq"]):
        if r["window"]["fio_running_at_end"] is False:
            md.append("")
            md.append(f"note: {r['device']} {r['workload']} #{r['rep']}: fio ended inside the CPU "
                      "window, so its CPU figures include fio's exit")
    if failed:
        md.append("")
        md.append("failed repetitions (no figures): "
                  + "; ".join(f"job {f['seq']} {f['job']} ({f['status']})" for f in failed))
    stalls = [r for r in sorted(reps, key=lambda r: r["seq"]) if r["stall"]]
    md.append("")
    if not stalls:
        md.append("stalls: none")
    for r in stalls:
        hw = r["host_window"]
        gs = r["guest_state"] or {"dmesg": []}
        host_part = (f"other host processes used {hw['other_cpus']:.2f} CPUs and the hypervisor "
                     f"stole {hw['steal_cpus']:.2f} during it (load average up to "
                     f"{fmt(hw['loadavg_max'], 2)})" if hw else "no host samples for its window")
        log_part = (f"{len(gs['dmesg'])} new guest kernel log lines (first: {gs['dmesg'][0]})"
                    if gs["dmesg"] else "no new guest kernel log lines")
        if "before.mem.MemFree_kb" in gs:
            log_part += (f"; the guest before it: {int(gs['before.mem.MemFree_kb']) // 1024} MiB free, "
                         f"{int(gs.get('before.mem.Dirty_kb', 0)) // 1024} MiB dirty, load average "
                         f"{gs.get('before.loadavg', '?')}")
        stuck = sorted(k[len("before.inflight."):] + " " + v.replace(" ", "/")
                       for k, v in gs.items() if k.startswith("before.inflight."))
        log_part += ("; requests in flight (reads/writes) as it started: " + ", ".join(stuck)
                     if stuck else "; no requests in flight as it started")
        before = r["ran_before"]
        md.append(f"STALL: {r['device']} {r['workload']} #{r['rep']} (job {r['seq']} of the run): "
                  f"{fmt(r['iops'])} IOPS, {fmt(r['iops_share_of_median'], 2)} of the row's median; "
                  f"p99 {fmt(r['clat_p99_us'])} µs, p99.9 {fmt(r['clat_p999_us'])} µs; {host_part}; "
                  f"{log_part}; {len(before)} jobs ran before it in this VM"
                  + (f", the last: {'; '.join(before[-3:])}" if before else "")
                  + " (all in results.json)")
    md.append("")
    for t in targets:
        if t["verdict"] != "not evaluated":
            md.append(t["line"])
    missing = [t["line"] for t in targets if t["verdict"] == "not evaluated"]
    if missing:
        md.append(f"targets not evaluated (a row missing from this run): {'; '.join(missing)}")
    return "\n".join(md) + "\n"


def idle_cpu(top, guest_hz):
    """The guest's CPU with no job running (all devices set up)."""
    path = os.path.join(top, "idle.cpu")
    if not os.path.exists(path):
        return None
    try:
        ((g0, _), (g1, _)), _ = parse_cpu(path)
        window = g1["wall"] - g0["wall"]
        return {"seconds": window,
                "guest_busy_cpus": sum(g1[k] - g0[k] for k in BUSY) / guest_hz / window,
                "guest_sched_cpus": (g1["sched_ns"] - g0["sched_ns"]) / 1e9 / window}
    except (OSError, ValueError, KeyError, ZeroDivisionError) as e:
        print(f"bench-report: idle.cpu: {e}", file=sys.stderr)
        return None


def report(top):
    """Writes results.json and results.md into TOP; returns the markdown and
    the results."""
    host = read_env(os.path.join(top, "host.env"))
    guest = read_env(os.path.join(top, "guest.env"))
    guest_hz = int(guest.get("guest_hz", 100))
    cpus = int(guest.get("cpus", 1))
    samples = parse_host_samples(os.path.join(top, "host-samples"))
    jobs = read_index(top)
    reps, unreadable = load_reps(top, jobs, guest_hz, cpus, samples)
    rows = build_rows(reps, jobs)
    failed = sorted([{"seq": seq, "job": label(d, w, n), "status": status}
                     for seq, (d, w, n, _, status) in enumerate(jobs, 1) if status != "ok"]
                    + unreadable, key=lambda f: f["seq"])
    by_key = {(r["device"], r["workload"]): r for r in rows}
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    comparisons = [c for s, b in COMPARISONS for w in workloads if (c := compare(by_key, s, b, w))]
    cross = []
    for s, b in CROSS_STACK:
        for w in workloads:
            c = compare(by_key, s, b, w)
            if c:
                cross.append({**c, "subject_row": by_key[(s, w)], "baseline_row": by_key[(b, w)]})
    targets = [evaluate(t, by_key) for t in TARGETS]
    idle = idle_cpu(top, guest_hz)
    timing = None
    starts = [started for _, _, _, started, _ in jobs if started is not None]
    try:
        if starts and "guest_start" in guest and "guest_end" in guest:
            timing = {"setup_seconds": min(starts) - float(guest["guest_start"]),
                      "jobs_seconds": float(guest["guest_end"]) - min(starts), "jobs": len(jobs)}
    except ValueError:
        timing = None
    text = render({"host": host, "guest": guest, "timing": timing}, rows, comparisons, cross, targets, idle, reps,
                  failed)
    results = {
        "host": host, "guest": guest, "timing": timing, "stall_share": STALL_SHARE, "idle": idle,
        "rows": rows, "comparisons": comparisons,
        "cross_stack": [{k: v for k, v in c.items() if not k.endswith("_row")} for c in cross],
        "targets": targets,
        "failed": failed,
        "stalls": [{"device": r["device"], "workload": r["workload"], "rep": r["rep"],
                    "seq": r["seq"], "iops": r["iops"], "share": r["iops_share_of_median"],
                    "ran_before": r["ran_before"]} for r in reps if r["stall"]],
    }
    with open(os.path.join(top, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(top, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return text, results


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    text, results = report(sys.argv[1])
    print(text, end="")
    return 0 if results["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
