#!/usr/bin/env bash
# Start a real SLURM cluster of one or more nodes on this machine (for tests and local trials).
#
#   bash tools/slurm/start_local_cluster.sh            # one node (or: make slurm-up)
#   bash tools/slurm/start_local_cluster.sh --nodes 2  # two nodes (or: make slurm-up NODES=2)
#   eval "$(bash tools/slurm/start_local_cluster.sh --env)"   # start, then export the env in this shell
#
# What it does (idempotent: a running cluster of the same size is reused, and a node whose
# slurmd died is restarted alone):
#   1. installs slurmctld/slurmd/slurm-client/munge with apt-get if missing (tools/slurm/install_deps.sh);
#   2. writes $STATE/slurm.conf for this host (template tools/slurm/slurm.conf.in) and a private munge key;
#   3. starts munged, `slurmctld -D -i` and one `slurmd -D -N NODE` per node in the background,
#      one pid file each ($STATE/pids/*.pid; tools/slurm/stop_local_cluster.sh ends exactly those);
#   4. waits until `sinfo` reports every node idle, then prints the environment to use.
#
# Nodes: one node is named after this host, at 127.0.0.1. N > 1 nodes are n1..nN at the
# loopback addresses 127.0.0.2..127.0.0.(N+1), slurmd ports SLURMD_PORT..SLURMD_PORT+N-1,
# each with 1/N of the cores (at least one) and of the memory. The names do not resolve:
# jobs find a node's address with `scontrol show node` (launchers/slurm.py does).
#
# Settings (environment):
#   MEGACOMPRESS_SLURM_DIR   state dir (default /tmp/megacompress-slurm)
#   SLURM_PARTITION          partition name (default debug)
#   SLURMCTLD_PORT/SLURMD_PORT  ports (default 6817/6818; node i uses SLURMD_PORT + i - 1)
#   SLURM_START_TIMEOUT      seconds to wait for the nodes to become idle (default 60)
# Exit codes: 0 up, 2 packages cannot be installed (tests skip), 1 any other failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${MEGACOMPRESS_SLURM_DIR:-/tmp/megacompress-slurm}
PARTITION=${SLURM_PARTITION:-debug}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
TIMEOUT=${SLURM_START_TIMEOUT:-60}
PRINT_EXPORTS=0
NODES=1
while [ $# -gt 0 ]; do
    case "$1" in
        --env) PRINT_EXPORTS=1 ;;
        --nodes) NODES=${2:-}; shift ;;
        --nodes=*) NODES=${1#--nodes=} ;;
        *) echo "start_local_cluster.sh: unknown argument '$1' (use --nodes N, --env)" >&2; exit 1 ;;
    esac
    shift
done
case "$NODES" in
    ''|*[!0-9]*|0) echo "start_local_cluster.sh: --nodes needs a positive integer, got '$NODES'" >&2; exit 1 ;;
esac
# 127.0.0.2..(N+1) must stay inside one /24 of loopback addresses.
[ "$NODES" -le 250 ] || { echo "start_local_cluster.sh: --nodes $NODES: at most 250" >&2; exit 1; }

CONF=$STATE/slurm.conf
PIDS=$STATE/pids
LOGS=$STATE/log
HOST=$(hostname -s)

node_name() { if [ "$NODES" -eq 1 ]; then echo "$HOST"; else echo "n$1"; fi; }
node_addr() { if [ "$NODES" -eq 1 ]; then echo 127.0.0.1; else echo "127.0.0.$(($1 + 1))"; fi; }
NAMES=()
for i in $(seq "$NODES"); do NAMES+=("$(node_name "$i")"); done

print_env() {
    local exports="export SLURM_CONF=$CONF
export PATH=$HERE/bin:\$PATH"
    if [ "$PRINT_EXPORTS" -eq 1 ]; then
        echo "$exports"
    else
        echo "Local SLURM cluster is up ($NODES node(s): ${NAMES[*]}; state: $STATE, partition: $PARTITION)." >&2
        echo "Use it from a shell with:" >&2
        echo "$exports" >&2
    fi
}

alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# "NAME STATE" per node, e.g. "n1 idle"; states end in * while a node does not respond.
node_states() { SLURM_CONF=$CONF sinfo -h -N -o "%N %T" 2>/dev/null; }

all_nodes() {  # all_nodes PATTERN: every node of this cluster is in a state matching PATTERN
    local states
    states=$(node_states)
    [ -n "$states" ] || return 1
    for name in "${NAMES[@]}"; do
        grep -Eq "^$name ($1)$" <<<"$states" || return 1
    done
}

fail() {
    echo "start_local_cluster.sh: $1" >&2
    for f in munged slurmctld "${NAMES[@]/#/slurmd.}"; do
        if [ -s "$LOGS/$f.log" ]; then
            echo "--- tail of $LOGS/$f.log ---" >&2
            tail -n 15 "$LOGS/$f.log" >&2
        fi
    done
    exit 1
}

# Each daemon runs in the foreground as our child, in its own session, so its pid is the
# one we record and a terminal hang-up does not end it.
start() {
    local name=$1; shift
    setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! > "$PIDS/$name.pid"
}

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        alive slurmctld || fail "slurmctld exited"
        for name in "${NAMES[@]}"; do alive "slurmd.$name" || fail "slurmd of node $name exited"; done
        if all_nodes idle; then print_env; exit 0; fi
        sleep 0.5
    done
    fail "nodes ${NAMES[*]} not all idle after ${TIMEOUT}s (sinfo: '$(node_states | tr '\n' ' ')')"
}

# Reuse a cluster of the same nodes that is already running from this state dir; restart
# the slurmd of a node that died (its node comes back idle: ReturnToService=2).
if alive munged && alive slurmctld && [ "$(cat "$STATE/nodes" 2>/dev/null)" = "${NAMES[*]}" ]; then
    for name in "${NAMES[@]}"; do
        alive "slurmd.$name" || start "slurmd.$name" slurmd -D -N "$name" -f "$CONF"
    done
    wait_idle
fi
if alive munged || alive slurmctld || compgen -G "$PIDS/slurmd.*.pid" >/dev/null; then
    bash "$HERE/stop_local_cluster.sh"
fi

set +e
bash "$HERE/install_deps.sh"
rc=$?
set -e
[ $rc -ne 0 ] && exit $rc

mkdir -p "$STATE" "$PIDS" "$LOGS" "$STATE/munge"
# A fresh controller state: a restarted test cluster must not revive jobs of an earlier session.
rm -rf "$STATE/ctld" "$STATE/slurmd"
mkdir -p "$STATE/ctld"
for name in "${NAMES[@]}"; do mkdir -p "$STATE/slurmd/$name"; done
chmod 700 "$STATE/munge"

# GNU nproc honours OMP_NUM_THREADS (1 in tests); the nodes share every online core.
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
NODE_CPUS=$((CPUS / NODES > 0 ? CPUS / NODES : 1))
# Leave 10% of memory to the OS so slurmd's self-check (RealMemory <= actual) always passes.
NODE_MEM_MB=$(awk -v n="$NODES" '/MemTotal/ {printf "%d", $2 / 1024 * 0.9 / n}' /proc/meminfo)
USER_NAME=$(id -un)

NODE_LINES=$STATE/nodes.conf.tmp
: > "$NODE_LINES"
for i in $(seq "$NODES"); do
    echo "NodeName=$(node_name "$i") NodeHostname=$HOST NodeAddr=$(node_addr "$i") Port=$((SLURMD_PORT + i - 1))" \
         "CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN" >> "$NODE_LINES"
done
sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" -e "s|@PARTITION@|$PARTITION|g" -e "s|@USER@|$USER_NAME|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    -e "/@NODES@/{r $NODE_LINES" -e "d}" \
    "$HERE/slurm.conf.in" > "$CONF.tmp"
rm -f "$NODE_LINES"
mv "$CONF.tmp" "$CONF"
echo "${NAMES[*]}" > "$STATE/nodes"

KEY=$STATE/munge/munge.key
if [ ! -s "$KEY" ]; then
    dd if=/dev/urandom of="$KEY.tmp" bs=1024 count=1 status=none
    chmod 400 "$KEY.tmp"
    mv "$KEY.tmp" "$KEY"
fi

# --force: munged refuses /tmp paths (world-writable parents) without it.
start munged munged --foreground --force --key-file="$KEY" --socket="$STATE/munge/munge.socket" \
    --seed-file="$STATE/munge/munge.seed" --pid-file="$STATE/munge/munged.pid" \
    --log-file="$LOGS/munged.log"
for _ in $(seq 50); do
    [ -S "$STATE/munge/munge.socket" ] && break
    alive munged || fail "munged exited"
    sleep 0.1
done
[ -S "$STATE/munge/munge.socket" ] || fail "munged did not create its socket"

start slurmctld slurmctld -D -i -f "$CONF"
for name in "${NAMES[@]}"; do
    start "slurmd.$name" slurmd -D -N "$name" -f "$CONF"
done
wait_idle
