#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (for tests and local trials).
#
#   bash tools/slurm/start_local_cluster.sh            # or: make slurm-up
#   eval "$(bash tools/slurm/start_local_cluster.sh --env)"   # start, then export the env in this shell
#
# What it does (idempotent: a running cluster is reused):
#   1. installs slurmctld/slurmd/slurm-client/munge with apt-get if missing (tools/slurm/install_deps.sh);
#   2. writes $STATE/slurm.conf for this host (template tools/slurm/slurm.conf.in) and a private munge key;
#   3. starts munged, `slurmctld -D -i` and `slurmd -D` in the background, one pid file each
#      ($STATE/pids/*.pid; tools/slurm/stop_local_cluster.sh ends exactly those);
#   4. waits until `sinfo` reports the node idle, then prints the environment to use.
#
# Settings (environment):
#   MEGACOMPRESS_SLURM_DIR   state dir (default /tmp/megacompress-slurm)
#   SLURM_PARTITION          partition name (default debug)
#   SLURMCTLD_PORT/SLURMD_PORT  ports (default 6817/6818)
#   SLURM_START_TIMEOUT      seconds to wait for the node to become idle (default 60)
# Exit codes: 0 up, 2 packages cannot be installed (tests skip), 1 any other failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${MEGACOMPRESS_SLURM_DIR:-/tmp/megacompress-slurm}
PARTITION=${SLURM_PARTITION:-debug}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
TIMEOUT=${SLURM_START_TIMEOUT:-60}
PRINT_EXPORTS=0
[ "${1:-}" = "--env" ] && PRINT_EXPORTS=1

CONF=$STATE/slurm.conf
PIDS=$STATE/pids
LOGS=$STATE/log

print_env() {
    local exports="export SLURM_CONF=$CONF
export PATH=$HERE/bin:\$PATH"
    if [ "$PRINT_EXPORTS" -eq 1 ]; then
        echo "$exports"
    else
        echo "Local SLURM cluster is up (state: $STATE, partition: $PARTITION)." >&2
        echo "Use it from a shell with:" >&2
        echo "$exports" >&2
    fi
}

alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

node_state() { SLURM_CONF=$CONF sinfo -h -N -o %T 2>/dev/null | head -n 1; }

fail() {
    echo "start_local_cluster.sh: $1" >&2
    for f in munged slurmctld slurmd; do
        if [ -s "$LOGS/$f.log" ]; then
            echo "--- tail of $LOGS/$f.log ---" >&2
            tail -n 15 "$LOGS/$f.log" >&2
        fi
    done
    exit 1
}

# Reuse a cluster that is already running from this state dir.
if alive munged && alive slurmctld && alive slurmd; then
    case "$(node_state)" in
        idle*|mix*|alloc*) print_env; exit 0 ;;
    esac
fi
if alive munged || alive slurmctld || alive slurmd; then
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
mkdir -p "$STATE/ctld" "$STATE/slurmd"
chmod 700 "$STATE/munge"

HOST=$(hostname -s)
# GNU nproc honours OMP_NUM_THREADS (1 in tests); the node has every online core.
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
# Leave 10% of memory to the OS so slurmd's self-check (RealMemory <= actual) always passes.
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
USER_NAME=$(id -un)

sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" \
    -e "s|@MEM_MB@|$MEM_MB|g" -e "s|@PARTITION@|$PARTITION|g" -e "s|@USER@|$USER_NAME|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    "$HERE/slurm.conf.in" > "$CONF.tmp"
mv "$CONF.tmp" "$CONF"

KEY=$STATE/munge/munge.key
if [ ! -s "$KEY" ]; then
    dd if=/dev/urandom of="$KEY.tmp" bs=1024 count=1 status=none
    chmod 400 "$KEY.tmp"
    mv "$KEY.tmp" "$KEY"
fi

# Each daemon runs in the foreground as our child, in its own session, so its pid is the
# one we record and a terminal hang-up does not end it.
start() {
    local name=$1; shift
    setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! > "$PIDS/$name.pid"
}

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
start slurmd slurmd -D -f "$CONF"

deadline=$((SECONDS + TIMEOUT))
while [ $SECONDS -lt $deadline ]; do
    alive slurmctld || fail "slurmctld exited"
    alive slurmd || fail "slurmd exited"
    case "$(node_state)" in
        idle*) print_env; exit 0 ;;
    esac
    sleep 0.5
done
fail "node $HOST not idle after ${TIMEOUT}s (sinfo: '$(node_state)')"
