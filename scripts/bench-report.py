#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turns a `make bench` results directory into results.json and results.md.

    bench-report.py DIR

DIR holds what scripts/guest/bench.sh wrote: an index of the jobs that ran,
<device>/<workload>.json (fio's JSON report) and <workload>.cpu (guest and
host CPU counters at both ends of the measured window). Prints the markdown
table and the target line; see Documentation/benchmarks.rst for the method.
"""
import json
import os
import sys

# The comparison the table leads to: rows whose ratio is shown, and the
# target the project set itself (issue 4).
SUBJECT, BASELINE = "dpublk", "qemu-nvme"
TARGET_WORKLOAD, TARGET_RATIO = "randread-4k-qd32", 1.5

# Every pair of rows whose ratios are shown: (subject, baseline), on the
# workloads both ran. The data-service rows against the Linux stack doing
# the same work in the guest, and each thin stack with 10 snapshots against
# itself with none (the snapshot cost).
COMPARISONS = [
    (SUBJECT, BASELINE),
    ("dpublk-raid6", "md-raid6"),
    ("dpublk-ec", "md-raid6"),
    ("dpublk-thin", "dm-thin"),
    ("dpublk-thin-snap10", "dm-thin-snap10"),
    ("dpublk-thin-snap10", "dpublk-thin"),
    ("dm-thin-snap10", "dm-thin"),
    ("dpublk-reduce", "dm-vdo"),
    ("dpublk-crypt", "dm-crypt"),
]

# Issue 6: guest CPU per I/O (the scheduler's column) of dpublk's RAID6 and
# EC at most 0.2 times md RAID6's, with at least md's throughput.
PROTECTION_SUBJECTS, PROTECTION_BASELINE = ("dpublk-raid6", "dpublk-ec"), "md-raid6"
PROTECTION_WORKLOADS = ("write-128k-qd8", "read-128k-qd8", "randwrite-4k-qd32")
PROTECTION_CPU_RATIO, PROTECTION_IOPS_RATIO = 0.2, 1.0
# Issue 8: dpublk's dedup + compression saves at least the space dm-vdo
# saves, at no less than twice its write throughput.
REDUCE_SUBJECT, REDUCE_BASELINE, REDUCE_WORKLOAD = "dpublk-reduce", "dm-vdo", "write-128k-qd8-dedup"
REDUCE_THROUGHPUT_RATIO = 2.0

# Guest /proc/stat fields as scripts/guest/bench.sh records them, followed by
# the device's completed reads and writes and its sectors read and written,
# the scheduler's task run time (ns) and the wall clock (s).
GUEST_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "reads", "writes",
                "read_sectors", "write_sectors", "sched_ns", "wall")
BUSY = ("user", "nice", "system", "irq", "softirq")


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
    return json.loads(text[text.index("{"):])


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
            elif key in ("guest_before", "guest_after"):
                current[key] = dict(zip(GUEST_FIELDS, map(float, value.split())))
            elif key == "host":
                current["host"] = {k: int(v) for k, v in (w.split("=") for w in value.split())}
    if len(ends) != 2:
        raise ValueError(f"{path}: expected two samples, found {len(ends)}")
    result = []
    for end in ends:
        guest = {k: (end["guest_before"][k] + end["guest_after"][k]) / 2 for k in GUEST_FIELDS}
        result.append((guest, end["host"]))
    return result, running


def parse_size(text):
    """fio's sizes: a number with an optional k/m/g suffix, base 1024."""
    text = text.strip().lower().rstrip("b")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("kmg")) * scale


def derive(fio, cpu, guest_hz, cpus):
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

    def per_io(seconds):
        return seconds * 1e6 / ios if ios > 0 else None

    return {
        "rw": opts.get("rw"),
        "bs": opts.get("bs"),
        "iodepth": int(opts.get("iodepth", 1)),
        "iops": sum(job[d]["iops"] for d in ("read", "write")),
        "mb_per_s": sum(job[d]["bw_bytes"] for d in ("read", "write")) / 1e6,
        "clat_p50_us": pct.get("50.000000", 0) / 1e3,
        "clat_p99_us": pct.get("99.000000", 0) / 1e3,
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
    }


def fmt(value, digits=0):
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def service_targets(by_key):
    """The data-service targets (issues 6 and 8), one verdict each."""
    out = []
    for subject in PROTECTION_SUBJECTS:
        for w in PROTECTION_WORKLOADS:
            s, b = by_key.get((subject, w)), by_key.get((PROTECTION_BASELINE, w))
            t = {"issue": 6, "subject": subject, "baseline": PROTECTION_BASELINE, "workload": w}
            if not s or not b:
                t["verdict"] = "not evaluated"
                t["line"] = f"target not evaluated: {w} missing for {subject} or {PROTECTION_BASELINE}"
                out.append(t)
                continue
            cpu = ratio(s["guest_sched_us_per_io"], b["guest_sched_us_per_io"])
            iops = ratio(s["iops"], b["iops"])
            met = cpu is not None and iops is not None and cpu <= PROTECTION_CPU_RATIO \
                and iops >= PROTECTION_IOPS_RATIO
            t.update({"guest_sched_ratio": cpu, "iops_ratio": iops, "want_cpu": PROTECTION_CPU_RATIO,
                      "want_iops": PROTECTION_IOPS_RATIO,
                      "verdict": "target met" if met else "target missed"})
            t["line"] = (f"{t['verdict']}: {w} {subject} vs {PROTECTION_BASELINE}: guest CPU "
                         f"{fmt(s['guest_sched_us_per_io'], 1)} vs {fmt(b['guest_sched_us_per_io'], 1)} "
                         f"µs/IO (sched) = {fmt(cpu, 2)}x (target <= {PROTECTION_CPU_RATIO}x), "
                         f"{s['iops']:,.0f} vs {b['iops']:,.0f} IOPS = {fmt(iops, 2)}x "
                         f"(target >= {PROTECTION_IOPS_RATIO:g}x)")
            out.append(t)
    s, b = by_key.get((REDUCE_SUBJECT, REDUCE_WORKLOAD)), by_key.get((REDUCE_BASELINE, REDUCE_WORKLOAD))
    t = {"issue": 8, "subject": REDUCE_SUBJECT, "baseline": REDUCE_BASELINE, "workload": REDUCE_WORKLOAD}
    if s and b and "space" in s and "space" in b:
        saved_s, saved_b = s["space"]["saved"], b["space"]["saved"]
        thr = ratio(s["mb_per_s"], b["mb_per_s"])
        met = saved_s is not None and saved_b is not None and saved_s >= saved_b \
            and thr is not None and thr >= REDUCE_THROUGHPUT_RATIO
        t.update({"saved": saved_s, "baseline_saved": saved_b, "throughput_ratio": thr,
                  "want_throughput": REDUCE_THROUGHPUT_RATIO,
                  "verdict": "target met" if met else "target missed"})
        t["line"] = (f"{t['verdict']}: {REDUCE_WORKLOAD} {REDUCE_SUBJECT} vs {REDUCE_BASELINE}: "
                     f"space saved {saved_s * 100:.1f} % vs {saved_b * 100:.1f} % (target >=), "
                     f"write {s['mb_per_s']:,.1f} vs {b['mb_per_s']:,.1f} MB/s = {fmt(thr, 2)}x "
                     f"(target >= {REDUCE_THROUGHPUT_RATIO:g}x)")
    else:
        t["verdict"] = "not evaluated"
        t["line"] = (f"target not evaluated: {REDUCE_WORKLOAD} or its space figures missing for "
                     f"{REDUCE_SUBJECT} or {REDUCE_BASELINE}")
    out.append(t)
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    top = sys.argv[1]
    host = read_env(os.path.join(top, "host.env"))
    guest = read_env(os.path.join(top, "guest.env"))
    guest_hz = int(guest.get("guest_hz", 100))
    cpus = int(guest.get("cpus", 1))
    rows = []
    index = os.path.join(top, "index")
    jobs = []
    if os.path.exists(index):
        with open(index) as f:
            jobs = [line.split() for line in f if line.strip()]
    for device, workload in jobs:
        base = os.path.join(top, device, workload)
        try:
            fio = load_fio(base + ".json")
            row = derive(fio, parse_cpu(base + ".cpu"), guest_hz, cpus)
        except (OSError, ValueError, KeyError) as e:
            print(f"bench-report: {device} {workload}: {e}", file=sys.stderr)
            continue
        row = {"device": device, "workload": workload, **row}
        space = read_env(base + ".space")
        if space.get("logical_bytes") and space.get("physical_bytes"):
            logical, physical = int(space["logical_bytes"]), int(space["physical_bytes"])
            row["space"] = {
                "logical_bytes": logical,
                "physical_bytes": physical,
                "saved": 1 - physical / logical if logical else None,
                "raw": space,
            }
        row["fio"] = fio
        rows.append(row)

    # The guest interleaves devices within each workload; the table groups
    # by device (stable sort: workloads keep their order).
    devices = list(dict.fromkeys(r["device"] for r in rows))
    rows.sort(key=lambda r: devices.index(r["device"]))
    by_key = {(r["device"], r["workload"]): r for r in rows}
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    comparisons = []
    for subject, baseline in COMPARISONS:
        for w in workloads:
            s, b = by_key.get((subject, w)), by_key.get((baseline, w))
            if not s or not b:
                continue
            comparisons.append({
                "subject": subject,
                "baseline": baseline,
                "workload": w,
                "iops": ratio(s["iops"], b["iops"]),
                "guest_cpu_per_io": ratio(s["guest_cpu_us_per_io"], b["guest_cpu_us_per_io"]),
                "guest_sched_per_io": ratio(s["guest_sched_us_per_io"], b["guest_sched_us_per_io"]),
                "host_cpu_per_io": ratio(s["host_cpu_us_per_io"], b["host_cpu_us_per_io"]),
            })
    ratios = [{k: v for k, v in c.items() if k not in ("subject", "baseline")}
              for c in comparisons if (c["subject"], c["baseline"]) == (SUBJECT, BASELINE)]

    s, b = by_key.get((SUBJECT, TARGET_WORKLOAD)), by_key.get((BASELINE, TARGET_WORKLOAD))
    if s and b:
        r = s["iops"] / b["iops"] if b["iops"] else 0
        verdict = "target met" if r >= TARGET_RATIO else "target missed"
        target = {"workload": TARGET_WORKLOAD, "want": TARGET_RATIO, "ratio": r,
                  "subject_iops": s["iops"], "baseline_iops": b["iops"], "verdict": verdict}
        target_line = (f"{verdict}: {TARGET_WORKLOAD} {SUBJECT} {s['iops']:,.0f} IOPS vs "
                       f"{BASELINE} {b['iops']:,.0f} IOPS = {r:.2f}x (target >= {TARGET_RATIO}x)")
    else:
        target = {"workload": TARGET_WORKLOAD, "verdict": "not evaluated"}
        target_line = f"target not evaluated: {TARGET_WORKLOAD} missing for {SUBJECT} or {BASELINE}"

    # The guest's CPU with no job running (all devices set up).
    idle = None
    if os.path.exists(os.path.join(top, "idle.cpu")):
        try:
            ((g0, _), (g1, _)), _ = parse_cpu(os.path.join(top, "idle.cpu"))
            window = g1["wall"] - g0["wall"]
            idle = {"seconds": window,
                    "guest_busy_cpus": sum(g1[k] - g0[k] for k in BUSY) / guest_hz / window,
                    "guest_sched_cpus": (g1["sched_ns"] - g0["sched_ns"]) / 1e9 / window}
        except (OSError, ValueError, KeyError, ZeroDivisionError) as e:
            print(f"bench-report: idle.cpu: {e}", file=sys.stderr)
    targets = [target] + service_targets(by_key)
    md = []
    md.append(f"fio, io_uring, direct=1, 1 job; {guest.get('runtime', '?')} s measured after "
              f"{guest.get('ramp', '?')} s ramp (data-service rows: "
              f"{guest.get('service_runtime', '?')} s); guest {guest.get('cpus', '?')} vCPUs "
              f"({guest.get('accel', '?')}), kernel {guest.get('kernel', '?')}; devices "
              f"{host.get('size', '?')} (data-service rows: {host.get('service_size', '?')}); "
              f"{host.get('ssds', '?')} SSD functions; host {host.get('host_cpu', '?')}, "
              f"{host.get('host_cpus', '?')} CPUs, load average {host.get('loadavg_start', '?')} "
              f"at the start, {host.get('loadavg_end', '?')} at the end; {host.get('git', '?')}")
    if idle:
        md.append("")
        md.append(f"Guest CPU with no job running (every device set up, {idle['seconds']:.0f} s): "
                  f"{idle['guest_busy_cpus'] * 1000:,.0f} ms/s (/proc/stat), "
                  f"{idle['guest_sched_cpus'] * 1000:,.0f} ms/s (sched); every window holds it, "
                  "so it weighs most on the rows with the fewest I/Os per second.")
    md.append("")
    md.append("| device | workload | IOPS | MB/s | p50 clat µs | p99 clat µs | guest CPU µs/IO "
              "| guest sched µs/IO | host QEMU µs/IO | host dpuemu µs/IO | host total µs/IO |")
    md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        md.append(f"| {r['device']} | {r['workload']} | {fmt(r['iops'])} | {fmt(r['mb_per_s'], 1)} "
                  f"| {fmt(r['clat_p50_us'], 1)} | {fmt(r['clat_p99_us'], 1)} "
                  f"| {fmt(r['guest_cpu_us_per_io'], 1)} | {fmt(r['guest_sched_us_per_io'], 1)} "
                  f"| {fmt(r['host_qemu_us_per_io'], 1)} "
                  f"| {fmt(r['host_dpuemu_us_per_io'], 1)} | {fmt(r['host_cpu_us_per_io'], 1)} |")
    if comparisons:
        md.append("")
        # Guest and host CPU are not added up: under TCG the host's QEMU time
        # contains the guest's.
        md.append("| ratio | workload | IOPS | guest CPU per I/O | guest sched per I/O "
                  "| host CPU per I/O |")
        md.append("| --- | --- | ---: | ---: | ---: | ---: |")
        for q in comparisons:
            md.append(f"| {q['subject']} / {q['baseline']} | {q['workload']} | {fmt(q['iops'], 2)} "
                      f"| {fmt(q['guest_cpu_per_io'], 2)} | {fmt(q['guest_sched_per_io'], 2)} "
                      f"| {fmt(q['host_cpu_per_io'], 2)} |")
    spaced = [r for r in rows if "space" in r]
    if spaced:
        md.append("")
        md.append("| device | workload | logical MiB | physical MiB | space saved |")
        md.append("| --- | --- | ---: | ---: | ---: |")
        for r in spaced:
            sp = r["space"]
            md.append(f"| {r['device']} | {r['workload']} | {fmt(sp['logical_bytes'] / 2**20, 1)} "
                      f"| {fmt(sp['physical_bytes'] / 2**20, 1)} "
                      f"| {fmt(sp['saved'] * 100 if sp['saved'] is not None else None, 1)} % |")
    for r in rows:
        if r["window"]["fio_running_at_end"] is False:
            md.append("")
            md.append(f"note: {r['device']} {r['workload']}: fio ended inside the CPU window, "
                      "so its CPU figures include fio's exit")
    md.append("")
    md.append(target_line)
    for t in targets[1:]:
        md.append(t["line"])
    text = "\n".join(md) + "\n"

    with open(os.path.join(top, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(top, "results.json"), "w") as f:
        json.dump({"host": host, "guest": guest, "rows": rows, "ratios": ratios,
                   "comparisons": comparisons, "target": target, "targets": targets,
                   "idle": idle}, f, indent=1)
    print(text, end="")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
