#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Export an existing volume of the accelerator over NVMe/TCP: a port on
# ADDRESS:SERVICE, a subsystem NQN on it, the volume as its namespace 1.
# Any NVMe/TCP host then reaches it (nvme discover / nvme connect -t tcp).
#
#   nvmf-export.sh VOLUME NQN ADDRESS SERVICE [HOSTNQN...]
#     VOLUME   a volume of the accelerator (volumes/VOLUME, or volume_list)
#     NQN      the subsystem's NQN, e.g. nqn.2026-12.org.example:db
#     ADDRESS  an IPv4 or IPv6 address of the accelerator's machine to
#              listen on (0.0.0.0: every address)
#     SERVICE  the TCP port, usually 4420
#     HOSTNQN  hosts allowed to connect; none given: any host
#
# teardown.sh takes it down again (namespaces, subsystems, ports first).
. "$(dirname "$0")/common.sh"
[ $# -ge 4 ] || die "usage: $0 VOLUME NQN ADDRESS SERVICE [HOSTNQN...]"
volume=$1 nqn=$2 address=$3 service=$4
shift 4
need_dpublk
nvmf=$CFS/nvmf
[ -d "$nvmf" ] || die "this dpublk has no nvmf/ (features: $(tr '\n' ' ' <"$CFS/features"))"

# A port: the first free ID, or the one already listening on the address.
port=
for p in "$nvmf"/ports/*/; do
	[ -d "$p" ] || continue
	if [ "$(cat "$p/addr_traddr")" = "$address" ] && [ "$(cat "$p/addr_trsvcid")" = "$service" ]; then
		port=$(basename "$p")
	fi
done
if [ -z "$port" ]; then
	port=1
	while [ -d "$nvmf/ports/$port" ]; do port=$((port + 1)); done
	mkdir "$nvmf/ports/$port"
	case $address in
	*:*) put "$nvmf/ports/$port/addr_adrfam" ipv6 ;;
	*) put "$nvmf/ports/$port/addr_adrfam" ipv4 ;;
	esac
	put "$nvmf/ports/$port/addr_traddr" "$address"
	put "$nvmf/ports/$port/addr_trsvcid" "$service"
	put "$nvmf/ports/$port/enable" 1
	say "port $port listening on $address:$service"
fi

sub=$nvmf/subsystems/$nqn
[ -d "$sub" ] || mkdir "$sub"
if [ $# = 0 ]; then
	put "$sub/attr_allow_any_host" 1
else
	for host in "$@"; do
		grep -qxF "$host" "$sub/allowed_hosts" || put "$sub/allowed_hosts" "add $host"
	done
fi
put "$sub/ports" "$port"
put "$sub/enable" 1
ns=$sub/namespaces/1
[ -d "$ns" ] || mkdir "$ns"
if [ "$(cat "$ns/enable")" != 1 ]; then
	put "$ns/volume" "$volume"
	put "$ns/enable" 1
fi
say "volume $volume is namespace 1 of $nqn on $address:$service" \
	"(${*:-any host}): nvme connect -t tcp -a $address -s $service -n $nqn"
