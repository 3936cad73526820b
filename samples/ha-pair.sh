#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Two dpuemu nodes on one machine as an active/passive pair over the same
# two SSD images (Documentation/ha.rst): a raid10 volume served over
# NVMe/TCP by node A on 127.0.0.1:4420 (ANA optimized) and by node B on
# 127.0.0.1:4421 (ANA inaccessible until it takes over).
#
#   samples/ha-pair.sh [DIR]      # files, images, logs and state in DIR
#
# Then, from a host with native NVMe multipath (nvme_core.multipath=Y):
#   nvme connect -t tcp -a 127.0.0.1 -s 4420 -n nqn.2026-12.org.dpublk:ha --reconnect-delay=1 --ctrl-loss-tmo=-1
#   nvme connect -t tcp -a 127.0.0.1 -s 4421 -n nqn.2026-12.org.dpublk:ha --reconnect-delay=1 --ctrl-loss-tmo=-1
#   cat DIR/a.status DIR/b.status       # who is active, fence generation, last failover
#   kill -HUP $(cat DIR/a.pid)          # hand over to B (maintenance); again on B to fail back
#   kill -9 $(cat DIR/a.pid)            # a failure: B takes over after the 1 s timeout
set -euo pipefail
DPUEMU=${DPUEMU:-dpuemu}
DIR=${1:-/tmp/dpuemu-ha}
NQN=nqn.2026-12.org.dpublk:ha
mkdir -p "$DIR"
declare -A SERVICE=([a]=4420 [b]=4421) HEARTBEAT=([a]=7800 [b]=7801) ROLE=([a]=active [b]=passive) PEER=([a]=b [b]=a)
for n in a b; do
	# The same subsystem, namespace and volume on both nodes; only the
	# address differs.
	cat >"$DIR/$n.nvmf" <<CONF
[port 1]
address 127.0.0.1
service ${SERVICE[$n]}

[volume db0]
layout raid10
ssds 0 1
size 1G

[subsystem $NQN]
ports 1
allow-any-host
namespace 1 volume db0
CONF
	cat >"$DIR/$n.ha" <<CONF
node dpu-$n
listen 127.0.0.1:${HEARTBEAT[$n]}
peer 127.0.0.1:${HEARTBEAT[${PEER[$n]}]}
role ${ROLE[$n]}
interval 100
timeout 1000
status $DIR/$n.status
CONF
done
for n in a b; do
	setsid "$DPUEMU" --socket-dir "$DIR/sockets-$n" \
		--ssd "$DIR/ssd0.img:2G" --ssd "$DIR/ssd1.img:2G" \
		--nvmf-config "$DIR/$n.nvmf" --ha-config "$DIR/$n.ha" \
		>>"$DIR/$n.log" 2>&1 </dev/null &
	echo $! >"$DIR/$n.pid"
	# A first: it makes the volume; B then starts passive.
	for _ in $(seq 1 300); do
		grep -q "^state ${ROLE[$n]}$" "$DIR/$n.status" 2>/dev/null && break
		sleep 0.1
	done
	echo "node $n: $(sed -n 's/^state //p' "$DIR/$n.status" 2>/dev/null || echo 'not up: see '"$DIR/$n.log")"
done
