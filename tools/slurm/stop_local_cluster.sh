#!/usr/bin/env bash
# Stop the local SLURM cluster started by start_local_cluster.sh (or: make slurm-down).
# Cancels the cluster's remaining jobs through SLURM, then ends exactly the daemons whose
# pid files start_local_cluster.sh wrote (TERM, then KILL after 10 s): one slurmd per node
# (pids/slurmd.NODE.pid), slurmctld, munged. State dir:
# $MEGACOMPRESS_SLURM_DIR (default /tmp/megacompress-slurm); it is kept for its logs.
set -uo pipefail

STATE=${MEGACOMPRESS_SLURM_DIR:-/tmp/megacompress-slurm}
PIDS=$STATE/pids
CONF=$STATE/slurm.conf

# A pid file names our daemon only while that pid still runs a program of the daemon's name
# (slurmd.n1 -> slurmd): after a crash the pid may belong to an unrelated process, which
# must not be signalled.
alive() {
    [ -f "$PIDS/$1.pid" ] || return 1
    local pid
    pid=$(cat "$PIDS/$1.pid")
    kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${1%%.*}" ]
}

if alive slurmctld && [ -f "$CONF" ]; then
    # Jobs end through slurmd, which signals their steps; give it a moment before stopping it.
    SLURM_CONF=$CONF scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
    for _ in $(seq 20); do
        [ -z "$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.5
    done
fi

slurmds=()
for file in "$PIDS"/slurmd.*.pid; do
    [ -e "$file" ] && slurmds+=("$(basename "$file" .pid)")
done
for name in "${slurmds[@]}" slurmctld munged; do
    alive "$name" || { rm -f "$PIDS/$name.pid"; continue; }
    pid=$(cat "$PIDS/$name.pid")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    rm -f "$PIDS/$name.pid"
    echo "stopped $name (pid $pid)" >&2
done
