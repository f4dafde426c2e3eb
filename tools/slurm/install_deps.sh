#!/usr/bin/env bash
# Install the Debian packages the local SLURM cluster (one or more nodes) needs
# (slurmctld, slurmd, slurm-client, munge). Idempotent and non-interactive.
# Exit codes: 0 installed (or already present), 2 cannot install (not root / apt failed);
# tests treat 2 as "skip", everything else as failure.
set -euo pipefail

need=()
for exe in slurmctld slurmd sinfo munged; do
    command -v "$exe" >/dev/null 2>&1 || need+=("$exe")
done
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_deps.sh: missing ${need[*]} and not root: cannot apt-get install slurmctld slurmd slurm-client munge" >&2
    exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_deps.sh: missing ${need[*]} and no apt-get on this system" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp /tmp/megacompress-slurm-apt.XXXXXX.log)
# The package lists may be stale or absent on a fresh container: update once, then install.
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge; } >"$log" 2>&1; then
    echo "install_deps.sh: apt-get failed (log: $log):" >&2
    tail -n 20 "$log" >&2
    exit 2
fi
rm -f "$log"
