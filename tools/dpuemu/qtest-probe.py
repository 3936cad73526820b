#!/usr/bin/env python3
"""Drives dpuemu through QEMU's own vfio-user client with the qtest
accelerator: no guest code runs, this script plays the guest's NVMe driver
(PCI config cycles, BAR0 MMIO, guest RAM reads/writes). It checks config
space, BAR assignment, MSI-X delivery (vectors aimed at RAM "mailboxes"),
the admin queue, an I/O queue pair, DMA through the memfd, the data in the
SSD image, and shutdown.

Usage (root, after `make` built target/release/dpuemu and the chroot with
QEMU exists): python3 tools/dpuemu/qtest-probe.py
Exit status 0 when every check passed."""
import os, subprocess, sys, time, struct, signal

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
D = os.environ.get("DPUEMU_PROBE_DIR", f"{TOP}/target/qtest-probe")
os.makedirs(D, exist_ok=True)
SOCK = f"{D}/s"
IMG = f"{D}/a.img"
subprocess.run(["rm", "-rf", SOCK, IMG])
log = open(f"{D}/dpuemu.log", "w")
emu = subprocess.Popen([f"{TOP}/target/release/dpuemu", "--socket-dir", SOCK, "--ssd", f"{IMG}:16M",
                        "--log-level", "debug"], stderr=log)
for _ in range(100):
    if os.path.exists(f"{SOCK}/ssd0.sock"):
        break
    time.sleep(0.05)

dev = '{"driver":"vfio-user-pci","addr":"04.0","socket":{"type":"unix","path":"%s/ssd0.sock"}}' % SOCK
qemu_cmd = ("qemu-system-x86_64 -machine q35,accel=qtest -qtest stdio -display none -nodefaults -m 256M "
            "-object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem "
            f"-device '{dev}'")
q = subprocess.Popen(["bash", "-c", f"source {TOP}/scripts/lib.sh; in_chroot bash -c \"{qemu_cmd.replace(chr(34), chr(92)+chr(34))}\""],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(f"{D}/qemu.err", "w"),
                     text=True, env=dict(os.environ, DPUBLK_TOP=TOP), bufsize=1,
                     start_new_session=True)
failures = []
passes = []
def check(what, ok):
    print(("ok   " if ok else "FAIL ") + what)
    (passes if ok else failures).append(what)

def cmd(line):
    q.stdin.write(line + "\n"); q.stdin.flush()
    while True:
        r = q.stdout.readline()
        if not r:
            raise SystemExit("qemu exited: " + open(f"{D}/qemu.err").read())
        if r.startswith("OK") or r.startswith("FAIL") or r.startswith("ERR"):
            if not r.startswith("OK"):
                raise SystemExit(f"{line} -> {r}")
            return r.strip()

CFG = 0x80000000 | (4 << 11)
def cfg_read(off): cmd(f"outl 0xcf8 {CFG | off:#x}"); return int(cmd("inl 0xcfc").split()[1], 16)
def cfg_write(off, v): cmd(f"outl 0xcf8 {CFG | off:#x}"); cmd(f"outl 0xcfc {v:#x}")
def wr(addr, data): cmd(f"write {addr:#x} {len(data)} 0x{data.hex()}")
def rd(addr, n): return bytes.fromhex(cmd(f"read {addr:#x} {n}").split()[1][2:])
BAR = 0xfe000000
def mw(off, v): cmd(f"writel {BAR + off:#x} {v:#x}")
def mr(off): return int(cmd(f"readl {BAR + off:#x}").split()[1], 16)

ident = cfg_read(0)
check(f"vendor/device {ident:#010x}", ident == 0x10f11af4)
check(f"class code {cfg_read(8) >> 8:#08x}", cfg_read(8) >> 8 == 0x010802)
cfg_write(0x10, BAR | 4); cfg_write(0x14, 0)
cfg_write(0x04, 0x6)
# MSI-X table: vector 0 -> mailbox 0x100000, vector 1 -> 0x100010.
for v, (addr, data) in enumerate([(0x100000, 0x1234), (0x100010, 0x5678)]):
    mw(0x2000 + 16 * v, addr); mw(0x2004 + 16 * v, 0); mw(0x2008 + 16 * v, data); mw(0x200c + 16 * v, 0)
cap = cfg_read(0x40)
cfg_write(0x40, cap | (0x8000 << 16))
check(f"MSI-X enabled (control {cfg_read(0x40) >> 16:#06x})", cfg_read(0x40) >> 31 == 1)

ASQ, ACQ, SQ1, CQ1, BUF = 0x200000, 0x201000, 0x203000, 0x202000, 0x300000
cap_lo = mr(0); print(f"CAP lo {cap_lo:#x} VS {mr(8):#x}")
mw(0x24, (15 << 16) | 15)
mw(0x28, ASQ); mw(0x2c, 0); mw(0x30, ACQ); mw(0x34, 0)
mw(0x14, 0x460001)
for _ in range(100):
    if mr(0x1c) & 1: break
    time.sleep(0.01)
check(f"controller ready (CSTS {mr(0x1c):#x})", mr(0x1c) == 1)

def sqe(opcode, cid, nsid=0, prp1=0, prp2=0, cdw10=0, cdw11=0, cdw12=0):
    return struct.pack("<IIIIQQQIIIIII", opcode | cid << 16, nsid, 0, 0, 0, prp1, prp2, cdw10, cdw11, cdw12, 0, 0, 0)

def wait_cqe(addr, phase=1):
    for _ in range(500):
        e = rd(addr, 16)
        dw3 = struct.unpack("<I", e[12:])[0]
        if (dw3 >> 16) & 1 == phase:
            return dw3 & 0xffff, dw3 >> 17
        time.sleep(0.01)
    raise SystemExit(f"no completion at {addr:#x}")

admin_tail = 0
def admin(entry):
    global admin_tail
    wr(ASQ + 64 * admin_tail, entry)
    admin_tail += 1
    mw(0x1000, admin_tail)
    cid, status = wait_cqe(ACQ + 16 * (admin_tail - 1))
    mw(0x1004, admin_tail)
    return cid, status

check("identify controller", admin(sqe(6, 1, prp1=BUF, cdw10=1)) == (1, 0))
idc = rd(BUF, 64)
check(f"identify data (SN {idc[4:24].decode().strip()})", idc[:2] == bytes([0xf4, 0x1a]))
time.sleep(0.05)
check("MSI-X vector 0 delivered", struct.unpack('<I', rd(0x100000, 4))[0] == 0x1234)
check("create I/O CQ", admin(sqe(5, 2, prp1=CQ1, cdw10=1 | 15 << 16, cdw11=0x3 | 1 << 16)) == (2, 0))
check("create I/O SQ", admin(sqe(1, 3, prp1=SQ1, cdw10=1 | 15 << 16, cdw11=0x1 | 1 << 16)) == (3, 0))
data = bytes((i * 7 + 3) & 0xff for i in range(4096))
wr(BUF + 0x10000, data)
wr(SQ1, sqe(1, 10, nsid=1, prp1=BUF + 0x10000, cdw10=8, cdw12=7 | 1 << 30))
mw(0x1008, 1)
check("write FUA", wait_cqe(CQ1) == (10, 0))
mw(0x100c, 1)
time.sleep(0.05)
check("MSI-X vector 1 delivered", struct.unpack('<I', rd(0x100010, 4))[0] == 0x5678)
with open(IMG, "rb") as f:
    f.seek(8 * 512); on_disk = f.read(4096)
check("written data in the SSD image", on_disk == data)
wr(SQ1 + 64, sqe(2, 11, nsid=1, prp1=BUF + 0x20000, cdw10=8, cdw12=7))
mw(0x1008, 2)
check("read", wait_cqe(CQ1 + 16) == (11, 0))
check("read data matches", rd(BUF + 0x20000, 4096) == data)
# Idle: controller enabled, queues live, client connected; no CPU may burn.
def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
hz = os.sysconf("SC_CLK_TCK")
before = cpu_ticks(emu.pid)
time.sleep(5)
used = (cpu_ticks(emu.pid) - before) / hz
check(f"idle CPU {100 * used / 5:.2f}% of a core over 5 s (< 2%)", used / 5 < 0.02)
# Shutdown as Linux does on unbind.
mw(0x14, 0x460001 | 1 << 14)
for _ in range(100):
    if (mr(0x1c) >> 2) & 3 == 2: break
    time.sleep(0.01)
check(f"shutdown complete (CSTS {mr(0x1c):#x})", (mr(0x1c) >> 2) & 3 == 2)
os.killpg(q.pid, signal.SIGTERM)
q.wait(timeout=20)
emu.send_signal(signal.SIGTERM)
emu.wait(timeout=10)
check("dpuemu exits 0 on SIGTERM", emu.returncode == 0)
check("sockets removed", not os.path.exists(f"{SOCK}/ssd0.sock"))
print(f"{len(passes)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
