#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Boots the test VM (virtme-ng, our kernel, the chroot's userland as root fs)
# and runs a command in it. Its stdout is the guest command's stdout.
#
#   scripts/vm.sh [options] -- <guest command...>
#     --accelerator     start dpuemu and attach its functions (vfio-user)
#     --ssds N          number of emulated local SSDs (default 4)
#     --ssd-size SIZE   size of each SSD image (default 1G), or a comma list:
#                       SSD i gets the i-th size, the last one repeats
#     --iommu           add a vIOMMU (intel-iommu,caching-mode=on) and boot
#                       the guest with intel_iommu=on
#     --memory SIZE     guest RAM (default 2G)
#     --images DIR      keep the SSD images in DIR (they outlive the run), so a
#                       later run can boot with the same media
#     --qemu-nvme SIZE  also attach QEMU's own NVMe controller (-device nvme,
#                       serial qemu-nvme) backed by a raw image of SIZE in the
#                       run directory, for comparisons with dpuemu's functions
#     --qemu-zns SIZE   also attach QEMU's own zoned NVMe namespace (16M zones,
#                       12M capacity, 8 open, 10 active) of SIZE, for
#                       test_zns_function's comparison
#     --output DIR      a directory the guest may write to (it outlives the
#                       run); the guest finds it in DPUBLK_OUTPUT_DIR
#     --net             QEMU's user network (slirp): the guest gets 10.0.2.15
#                       by DHCP and reaches the host's 127.0.0.1 as 10.0.2.2
#                       (test_nvmf_configfs: Linux's nvme-tcp in the guest
#                       against the NVMe/TCP target of the host's dpuemu)
#     --net-forward HOSTPORT:GUESTPORT
#                       --net, and the host's 127.0.0.1:HOSTPORT forwarded
#                       to the guest's TCP port GUESTPORT (slirp hostfwd), so
#                       a host program reaches a server in the guest
#                       (test_nvmf_remote_configfs: the host's dpuemu
#                       connects to nvmet-tcp in the guest). HOSTPORT "auto"
#                       takes a free port; the guest finds the pair in
#                       DPUBLK_NET_FORWARD.
#
# DPUBLK_DPUEMU_ARGS adds arguments to dpuemu (e.g. "--passthrough-ssd 0").
# DPUBLK_VM_TIMEOUT bounds the whole VM run in seconds (default 1800): past
# it QEMU is killed, the run fails with exit status 124 and the time limit is
# logged, so a hung guest can never stall the caller.
# The guest kernel turns warnings, hung tasks and soft lockups into panics
# (panic_on_warn=1 hung_task_panic=1 softlockup_panic=1; vng adds panic=-1
# and -no-reboot), so a kernel problem ends the VM and fails its suite
# instead of scrolling past in the log.
# Environment: DPUBLK_ACCEL=tcg|kvm|auto (default auto: KVM only where a short
# probe boot succeeds; the result is cached per kernel tree).
. "$(dirname "$0")/lib.sh"
# virtme-ng hands QEMU `-chardev file,path=/proc/self/fd/1` (and fd 2), which
# QEMU opens with O_TRUNC: when stdout or stderr is a regular file
# (`vm.sh ... > log`), each VM run truncated it, and a second run into the
# same log wiped the first one's results (seen on 2026-12-04 with
# `make hostile > log`). A pipe cannot be truncated.
if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	[ ! -f /proc/self/fd/1 ] || exec > >(cat)
	[ ! -f /proc/self/fd/2 ] || exec 2> >(cat >&2)
fi

if [ -z "${DPUBLK_IN_CHROOT:-}" ]; then
	kdir=$("$DPUBLK_TOP/scripts/setup-kernel.sh")
	DPUBLK_KDIR=$kdir in_chroot "$DPUBLK_TOP/scripts/vm.sh" "$@"
	exit
fi

accelerator=0 ssds=4 ssd_size=1G iommu=0 memory=2G qemu_nvme= qemu_zns= output= net=0 net_forward=
while [ $# -gt 0 ]; do
	case $1 in
	--accelerator) accelerator=1 ;;
	--ssds) ssds=$2; shift ;;
	--ssd-size) ssd_size=$2; shift ;;
	--iommu) iommu=1 ;;
	--memory) memory=$2; shift ;;
	--images) export DPUBLK_IMAGES_DIR=$2; shift ;;
	--qemu-nvme) qemu_nvme=$2; shift ;;
	--qemu-zns) qemu_zns=$2; shift ;;
	--output) output=$2; shift ;;
	--net) net=1 ;;
	--net-forward) net=1 net_forward=$2; shift ;;
	--) shift; break ;;
	*) die "vm.sh: unknown option $1" ;;
	esac
	shift
done
[ $# -gt 0 ] || die "vm.sh: no guest command given"
kdir=${DPUBLK_KDIR:?}

# One VM at a time: on a 2-core machine two TCG guests only slow each other
# down and make timing-sensitive tests flaky (two side by side took 244 s
# against 248 s one after the other, 2026-12-04).
exec 8>"$DPUBLK_CACHE/.vm.lock"
if ! flock -n 8; then
	log "waiting for another VM run to finish"
	flock 8
fi

# The run directory is visible to the guest at the same path (9p root), so
# guest scripts and the host side can exchange files through it.
mkdir -p "$DPUBLK_CACHE/run"
rundir=$(mktemp -d "$DPUBLK_CACHE/run/vm.XXXXXX")
export DPUBLK_RUNDIR=$rundir
cleanup() {
	local pid
	# A QEMU left behind by a signal to this script (its timeout(1) runs in
	# a process group of its own) is found by its QMP socket path.
	pkill -KILL -f -- "$rundir/qmp.sock" 2>/dev/null || true
	for pid in $(cat "$rundir"/*.pid 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
	for _ in $(seq 1 50); do
		pgrep -f "dpuemu.*$rundir" >/dev/null || break
		sleep 0.1
	done
	# DPUBLK_LOG_DIR (make check sets it): dpuemu's and the agent's logs
	# outlive the run, in a directory per boot.
	if [ -n "${DPUBLK_LOG_DIR:-}" ]; then
		mkdir -p "$DPUBLK_LOG_DIR/${rundir##*/}" &&
			cp "$rundir"/*.log "$DPUBLK_LOG_DIR/${rundir##*/}"/ 2>/dev/null
	fi
	# Removed in the background: unlinking SSD images whose pages are still
	# being written back waits for that writeback (18 s after make check's
	# dpublk suite, 2026-12-04), and nothing after this run needs the space
	# at once. No fd of this script's is inherited, so a pipe reading its
	# output ends when the script does.
	rm -rf "$rundir" </dev/null >/dev/null 2>&1 8>&- &
	log "VM run cleaned up"
}
trap cleanup EXIT

probe_kvm() {
	local stamp="$kdir/.dpublk-kvm-probe"
	[ -e /dev/kvm ] || { echo tcg; return; }
	if [ ! -f "$stamp" ]; then
		log "probing KVM with a short boot (cached in $stamp)"
		if timeout 20 vng --run "$kdir" --force-9p --disable-microvm --memory 512M \
			--exec 'echo dpublk-kvm-ok' 2>/dev/null | grep -q dpublk-kvm-ok; then
			echo kvm >"$stamp"
		else
			echo tcg >"$stamp"
		fi
	fi
	cat "$stamp"
}
case ${DPUBLK_ACCEL:-auto} in
tcg | kvm) accel=${DPUBLK_ACCEL} ;;
auto) accel=$(probe_kvm) ;;
*) die "DPUBLK_ACCEL must be tcg, kvm or auto" ;;
esac

qemu_opts="-object memory-backend-memfd,id=mem0,size=$memory,share=on -machine memory-backend=mem0"
append="console=ttyS0 panic_on_warn=1 hung_task_panic=1 softlockup_panic=1 nvme_core.io_timeout=10 nvme_core.admin_timeout=10 nvme_core.multipath=N"
if [ "$iommu" = 1 ]; then
	qemu_opts+=" -device intel-iommu,caching-mode=on"
	append+=" intel_iommu=on iommu.strict=1"
fi

# QMP lets the host agent hot-plug functions when a test restarts dpuemu.
qemu_opts+=" -qmp unix:$rundir/qmp.sock,server=on,wait=off"
"$DPUBLK_TOP/scripts/vm-agent.sh" "$rundir" &
echo $! >"$rundir/agent.pid"

if [ "$accelerator" = 1 ]; then
	# shellcheck disable=SC2086 # DPUBLK_DPUEMU_ARGS is a word list by design
	echo "$rundir" "$ssds" "$ssd_size" ${DPUBLK_DPUEMU_ARGS:-} >"$rundir/dpuemu.args"
	# shellcheck disable=SC2046
	sockets=$("$DPUBLK_TOP/scripts/dpuemu-start.sh" $(cat "$rundir/dpuemu.args"))
	# Each function sits behind its own PCIe root port, so it can be
	# hot-unplugged and plugged again (the accelerator is "accel", the SSDs
	# "ssd0", "ssd1", ...).
	mkdir -p "$rundir/devices"
	# The root bus has about 20 free slots; more functions than 16 put
	# their root ports 8 to a slot (multifunction, from slot 0x10 on).
	port=0 nsockets=$(wc -w <<<"$sockets")
	for sock in $sockets; do
		id=$(basename "$sock" .sock)
		port=$((port + 1))
		addr=
		if [ "$nsockets" -gt 16 ]; then
			addr=$(printf ',addr=0x%x.%x' $((0x10 + (port - 1) / 8)) $(((port - 1) % 8)))
			[ $(((port - 1) % 8)) = 0 ] && addr+=,multifunction=on
		fi
		qemu_opts+=" -device pcie-root-port,id=rp$port,chassis=$port,slot=$port$addr"
		spec="{\"driver\":\"vfio-user-pci\",\"id\":\"$id\",\"bus\":\"rp$port\",\"socket\":{\"type\":\"unix\",\"path\":\"$sock\"}}"
		echo "$spec" >"$rundir/devices/$id.json"
		# Single quotes keep the JSON intact through vng's shell-style split.
		qemu_opts+=" -device '$spec'"
	done
fi

if [ -n "$qemu_nvme" ]; then
	# The image sits on the same file system as dpuemu's SSD images, and the
	# cache mode matches what dpuemu does with them: cache=writeback is
	# buffered pread/pwrite through the host page cache (cache.direct=off)
	# with guest flushes passed on as fdatasync (cache.no-flush=off), like
	# dpuemu's pread/pwrite plus fdatasync on Flush.
	truncate -s "$qemu_nvme" "$rundir/qemu-nvme.img"
	qemu_opts+=" -drive file=$rundir/qemu-nvme.img,if=none,id=qemu-nvme,format=raw,cache=writeback"
	qemu_opts+=" -device nvme,serial=qemu-nvme,drive=qemu-nvme"
fi

if [ -n "$qemu_zns" ]; then
	# QEMU's own zoned namespace, the reference test_zns_function compares
	# dpuemu's zoned SSD function with: 16 MiB zones of 12 MiB capacity, 8
	# open and 10 active at most (what the test passes to --zoned-ssd).
	# cache=unsafe: its data never outlives the run, so QEMU need not
	# flush the image to the host's disk on the guest's flushes or at exit.
	truncate -s "$qemu_zns" "$rundir/qemu-zns.img"
	qemu_opts+=" -drive file=$rundir/qemu-zns.img,if=none,id=qemu-zns,format=raw,cache=unsafe"
	qemu_opts+=" -device nvme,id=qzc,serial=qemu-zns"
	qemu_opts+=" -device nvme-ns,drive=qemu-zns,bus=qzc,nsid=1,zoned=true,zoned.zone_size=16M"
	qemu_opts+=",zoned.zone_capacity=12M,zoned.max_open=8,zoned.max_active=10"
fi

if [ -n "$net_forward" ]; then
	[[ $net_forward =~ ^(auto|[0-9]+):([0-9]+)$ ]] || die "vm.sh: --net-forward takes HOSTPORT:GUESTPORT"
	host_port=${BASH_REMATCH[1]} guest_port=${BASH_REMATCH[2]}
	if [ "$host_port" = auto ]; then
		# A port nothing listens on; the host may run other VMs and
		# services, so try a few.
		host_port=
		for _ in $(seq 1 20); do
			p=$((20000 + RANDOM % 40000))
			if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
				host_port=$p
				break
			fi
		done
		[ -n "$host_port" ] || die "vm.sh: no free TCP port on the host for --net-forward"
	fi
	# vng's --network user makes a user netdev without forwards and has no
	# option for them, so the same network is built here (virtio-net, user
	# netdev, DHCP and stable interface names on the kernel command line,
	# as vng does) with the forward added.
	qemu_opts+=" -device virtio-net-pci,netdev=n0 -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$host_port-:$guest_port"
	append+=" virtme.dhcp net.ifnames=0 biosdevname=0"
	net_forward=$host_port:$guest_port
	log "forwarding the host's 127.0.0.1:$host_port to the guest's port $guest_port"
fi

# The guest's root is read-only; the run directory is writable so tests can
# talk to the host agent and leave results behind.
vng_args=(--run "$kdir" --force-9p --disable-microvm --memory "$memory" --cpus 2 --rwdir "$rundir"
	--append "$append" --qemu-opts="$qemu_opts")
if [ -n "$output" ]; then
	mkdir -p "$output"
	vng_args+=(--rwdir "$output")
fi
# Tests that span VM runs keep their notes beside the images.
[ -n "${DPUBLK_IMAGES_DIR:-}" ] && vng_args+=(--rwdir "$DPUBLK_IMAGES_DIR")
[ "$accel" = tcg ] && vng_args+=(--disable-kvm)
[ "$net" = 1 ] && [ -z "$net_forward" ] && vng_args+=(--network user)

# The guest command runs with the repository as working directory and knows
# where it is through the environment.
guest_cmd="cd '$DPUBLK_TOP' && export DPUBLK_TOP='$DPUBLK_TOP' DPUBLK_RUNDIR='$rundir' DPUBLK_ACCEL_MODE=$accel DPUBLK_IOMMU=$iommu DPUBLK_IMAGES_DIR='${DPUBLK_IMAGES_DIR:-}' DPUBLK_OUTPUT_DIR='$output' DPUBLK_NET_FORWARD='$net_forward' DPUBLK_MODULE='$DPUBLK_TOP/build/module/drivers/block/dpublk/dpublk.ko' && $*"
log "booting VM ($accel, ${memory} RAM, iommu=$iommu, accelerator=$accelerator${qemu_nvme:+, qemu-nvme=$qemu_nvme})"
vm_timeout=${DPUBLK_VM_TIMEOUT:-1800}
# timeout(1) signals its whole process group, so vng and the QEMU it forks
# both go.
rc=0
timeout --kill-after=20 "$vm_timeout" vng "${vng_args[@]}" --exec "$guest_cmd" || rc=$?
log "VM exited (status $rc)"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
	log "error: VM time limit of ${vm_timeout}s reached; QEMU killed"
	exit 124
fi
exit "$rc"
