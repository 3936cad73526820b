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
        row = {"device": device, "workload": workload, **row, "fio": fio}
        rows.append(row)

    # The guest interleaves devices within each workload; the table groups
    # by device (stable sort: workloads keep their order).
    devices = list(dict.fromkeys(r["device"] for r in rows))
    rows.sort(key=lambda r: devices.index(r["device"]))
    by_key = {(r["device"], r["workload"]): r for r in rows}
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    ratios = []
    for w in workloads:
        s, b = by_key.get((SUBJECT, w)), by_key.get((BASELINE, w))
        if not s or not b:
            continue
        ratios.append({
            "workload": w,
            "iops": ratio(s["iops"], b["iops"]),
            "guest_cpu_per_io": ratio(s["guest_cpu_us_per_io"], b["guest_cpu_us_per_io"]),
            "guest_sched_per_io": ratio(s["guest_sched_us_per_io"], b["guest_sched_us_per_io"]),
            "host_cpu_per_io": ratio(s["host_cpu_us_per_io"], b["host_cpu_us_per_io"]),
        })

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

    md = []
    md.append(f"fio, io_uring, direct=1, 1 job; {guest.get('runtime', '?')} s measured after "
              f"{guest.get('ramp', '?')} s ramp; guest {guest.get('cpus', '?')} vCPUs "
              f"({guest.get('accel', '?')}), kernel {guest.get('kernel', '?')}; devices "
              f"{host.get('size', '?')}; host {host.get('host_cpu', '?')}, "
              f"{host.get('host_cpus', '?')} CPUs, load average {host.get('loadavg_start', '?')} "
              f"at the start, {host.get('loadavg_end', '?')} at the end; {host.get('git', '?')}")
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
    if ratios:
        md.append("")
        # Guest and host CPU are not added up: under TCG the host's QEMU time
        # contains the guest's.
        md.append(f"| {SUBJECT} / {BASELINE} | IOPS | guest CPU per I/O | guest sched per I/O "
                  "| host CPU per I/O |")
        md.append("| --- | ---: | ---: | ---: | ---: |")
        for q in ratios:
            md.append(f"| {q['workload']} | {fmt(q['iops'], 2)} | {fmt(q['guest_cpu_per_io'], 2)} "
                      f"| {fmt(q['guest_sched_per_io'], 2)} | {fmt(q['host_cpu_per_io'], 2)} |")
    for r in rows:
        if r["window"]["fio_running_at_end"] is False:
            md.append("")
            md.append(f"note: {r['device']} {r['workload']}: fio ended inside the CPU window, "
                      "so its CPU figures include fio's exit")
    md.append("")
    md.append(target_line)
    text = "\n".join(md) + "\n"

    with open(os.path.join(top, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(top, "results.json"), "w") as f:
        json.dump({"host": host, "guest": guest, "rows": rows, "ratios": ratios, "target": target},
                  f, indent=1)
    print(text, end="")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
