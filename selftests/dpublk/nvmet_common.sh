# SPDX-License-Identifier: GPL-2.0
# Linux's nvmet-tcp target for the NVMe/TCP tests, configured through its
# configfs: one subsystem exporting an image file as namespace 1 to any
# host, on a port of the guest's loopback. Sourced after test_common.sh.

NVMET=$CONFIGFS/nvmet

# nvmet_setup: loads nvmet and nvmet-tcp and mounts configfs.
nvmet_setup() {
	local m
	for m in nvmet nvmet-tcp; do modprobe "$m" || fail "cannot load $m"; done
	ensure_configfs
	[ -d "$NVMET" ] || fail "no nvmet configfs at $NVMET"
}

# nvmet_export NQN IMAGE PORT_ID SERVICE: IMAGE (buffered I/O) becomes
# namespace 1 of subsystem NQN, reachable on 127.0.0.1:SERVICE through
# nvmet port PORT_ID; nvmet_remove undoes it at exit. nvmet takes a file
# namespace's block size from its file system: put IMAGE on a tmpfs (the
# guest's overlay /tmp reports none).
nvmet_export() {
	local nqn=$1 image=$2 port=$3 service=$4
	local sub=$NVMET/subsystems/$nqn
	on_exit "nvmet_remove $nqn $port"
	mkdir "$sub" || fail "cannot create the nvmet subsystem $nqn"
	echo 1 >"$sub/attr_allow_any_host"
	mkdir "$sub/namespaces/1"
	echo "$image" >"$sub/namespaces/1/device_path"
	echo 1 >"$sub/namespaces/1/buffered_io"
	echo 1 >"$sub/namespaces/1/enable" || fail "cannot enable the nvmet namespace"
	mkdir "$NVMET/ports/$port"
	echo tcp >"$NVMET/ports/$port/addr_trtype"
	echo ipv4 >"$NVMET/ports/$port/addr_adrfam"
	echo 127.0.0.1 >"$NVMET/ports/$port/addr_traddr"
	echo "$service" >"$NVMET/ports/$port/addr_trsvcid"
	nvmet_link "$nqn" "$port"
}

# nvmet_link NQN PORT_ID / nvmet_unlink NQN PORT_ID: the subsystem is
# served on the port, or not (unlinking ends its controllers there, as a
# target going away looks to its hosts).
nvmet_link() {
	ln -s "$NVMET/subsystems/$1" "$NVMET/ports/$2/subsystems/$1" || fail "cannot expose $1 on nvmet port $2"
}
nvmet_unlink() {
	rm -f "$NVMET/ports/$2/subsystems/$1"
}

nvmet_remove() {
	local nqn=$1 port=$2
	nvmet_unlink "$nqn" "$port"
	if [ -d "$NVMET/subsystems/$nqn/namespaces/1" ]; then
		echo 0 >"$NVMET/subsystems/$nqn/namespaces/1/enable"
		rmdir "$NVMET/subsystems/$nqn/namespaces/1"
	fi
	rmdir "$NVMET/subsystems/$nqn" "$NVMET/ports/$port" 2>/dev/null
}
