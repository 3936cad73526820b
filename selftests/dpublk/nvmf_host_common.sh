# SPDX-License-Identifier: GPL-2.0
# Linux's nvme-tcp initiator against one subsystem, for the NVMe/TCP tests
# (test_nvmf_tcp.sh, test_nvmf_configfs.sh). Sourced after test_common.sh,
# with NQN (the subsystem), PORT (its service) and NVMF_ADDRESS (the
# target's address; default 127.0.0.1) set by the test.

# nvmf_connect HOSTNQN HOSTID [nvme connect options...]
nvmf_connect() {
	local hostnqn=$1 hostid=$2
	shift 2
	nvme connect -t tcp -a "${NVMF_ADDRESS:-127.0.0.1}" -s "$PORT" -n "$NQN" \
		--hostnqn="$hostnqn" --hostid="$hostid" "$@"
}

# nvmf_namespace_dev: the block device of the subsystem's namespace 1 over
# TCP (empty if none).
nvmf_namespace_dev() {
	local b
	for b in /sys/block/nvme*n1; do
		[ -e "$b/device/subsysnqn" ] || continue
		[ "$(cat "$b/device/subsysnqn")" = "$NQN" ] || continue
		[ "$(cat "$b/device/transport")" = tcp ] || continue
		echo "/dev/$(basename "$b")"
		return
	done
}

# nvmf_wait_dev: that block device once it appears (10 s at most; empty
# if it does not).
nvmf_wait_dev() {
	local i dev
	for i in $(seq 1 100); do
		dev=$(nvmf_namespace_dev)
		[ -n "$dev" ] && [ -b "$dev" ] && { echo "$dev"; return; }
		sleep 0.1
	done
}

# nvmf_disconnect: disconnects the subsystem and fails the test if its
# block device stays.
nvmf_disconnect() {
	nvme disconnect -n "$NQN" >/dev/null 2>&1
	local i
	for i in $(seq 1 100); do
		[ -z "$(nvmf_namespace_dev)" ] && return 0
		sleep 0.1
	done
	fail "$NQN still has a block device after nvme disconnect"
}
