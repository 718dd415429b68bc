#!/usr/bin/env bash
# Stop the one-node SLURM test cluster started by tests/slurm/start-local-cluster.sh:
# cancel all jobs, then stop slurmd, slurmctld and munged (SIGTERM, SIGKILL after 15 s).
# Succeeds when nothing runs.
set -euo pipefail

log() { echo "[stop-local-cluster] $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "ERROR: run as root"; exit 1; }

# shellcheck source=tests/slurm/processes.sh
. "$(dirname "$0")/processes.sh"

stop_daemon() {   # stop_daemon NAME PIDFILE
    local name=$1 pidfile=$2 pid tries=0
    while pid=$(running_pid "$name" "$pidfile") && [ "$tries" -lt 5 ]; do
        tries=$((tries + 1))
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do alive "$pid" || break; sleep 0.5; done
        if alive "$pid"; then
            log "$name did not stop in 15 s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
    done
    rm -f "$pidfile"
}

if running_pid slurmctld /var/spool/slurmctld/slurmctld.pid >/dev/null && command -v scancel >/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null | wc -l || true)
    if [ "${jobs:-0}" -gt 0 ]; then
        log "cancelling $jobs job(s)"
        squeue -h -o %i 2>/dev/null | xargs -r scancel --quiet >/dev/null 2>&1 || true
        # give slurmd a moment to kill the job steps before it goes away itself
        for _ in $(seq 1 20); do
            [ -z "$(squeue -h -t RUNNING,COMPLETING,PENDING,REQUEUED,SUSPENDED -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

stop_daemon slurmd /var/spool/slurmd/slurmd.pid
stop_daemon slurmctld /var/spool/slurmctld/slurmctld.pid

if pid=$(running_pid munged /var/run/munge/munged.pid); then
    log "stopping munged (pid $pid)"
    runuser -u munge -- /usr/sbin/munged --stop >/dev/null 2>&1 || true
    stop_daemon munged /var/run/munge/munged.pid
fi
echo "local SLURM cluster stopped"
