#!/usr/bin/env bash
# Start a one-node SLURM test cluster on this machine (Debian/Ubuntu, run as root).
#
#   tests/slurm/start-local-cluster.sh     # installs slurm + munge if missing, starts munged,
#                                          # slurmctld and slurmd, waits for the node to be idle
#   tests/slurm/stop-local-cluster.sh      # cancels all jobs and stops the three daemons
#
# Idempotent: daemons that already run are left alone (restarted only when this script
# rewrote slurm.conf). /etc/slurm/slurm.conf is written only if it is absent or was written by
# this script (first line below); a hand-written slurm.conf is never touched.
#
# The config is tuned for the tests of submitit time-outs and requeues:
#   JobRequeue=1               batch jobs may be requeued (the default, set explicitly)
#   AuthInfo=cred_expire=10    a requeued job waits cred_expire+1 s before it may start again
#                              (default 120; 5, the minimum, also works here and saves ~5 s)
#   KillWait=5, OverTimeLimit=0  a job past its limit gets SIGTERM, then SIGKILL 5 s later
#   SchedulerParameters=sched_interval=5,bf_interval=5  pending (requeued) jobs are looked at
#                              every 5 s instead of every 30-60 s
#   MinJobAge=300              finished jobs stay visible for 5 minutes to `squeue -t all -j ID`
#                              and `scontrol show job ID` (accounting is off: sacct only says
#                              "Slurm accounting storage is disabled")
# Note: slurmctld checks time limits every 30 s and sends the --signal (submitit's
# slurm_signal_delay_s) up to 30 s early, so with timeout_min=1 and a 20 s delay a job gets
# SIGUSR2 somewhere between 10 s and 40 s after it starts.
set -euo pipefail

MARKER="# Written by tests/slurm/start-local-cluster.sh (carot-harness); it rewrites this file. Remove this line to keep your own edits."
CONF=/etc/slurm/slurm.conf
T0=$(date +%s)

log() { echo "[start-local-cluster] $*" >&2; }
die() { echo "[start-local-cluster] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"

# --- packages --------------------------------------------------------------------------------
need_install=0
for b in slurmctld slurmd sinfo squeue scontrol sbatch munged munge unmunge; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need_install=1
done
if [ "$need_install" -eq 1 ]; then
    log "installing slurmctld slurmd slurm-client munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

# shellcheck source=tests/slurm/processes.sh
. "$(dirname "$0")/processes.sh"

# --- munge -----------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 700 /etc/munge
    head -c 1024 /dev/urandom > /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
for d in /var/run/munge /var/log/munge /var/lib/munge; do
    mkdir -p "$d"
    chown munge:munge "$d"
done
chmod 755 /var/run/munge          # clients must reach the socket
chmod 700 /var/log/munge
chmod 711 /var/lib/munge

if running_pid munged /var/run/munge/munged.pid >/dev/null; then
    log "munged already running"
else
    log "starting munged"
    rm -f /var/run/munge/munged.pid   # a stale pid file (container restart) is harmless, but tidy
    # --force: start even if a stale socket from a killed munged is left behind
    runuser -u munge -- /usr/sbin/munged --force
fi
ok=0
for _ in $(seq 1 20); do
    if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
done
[ "$ok" -eq 1 ] || die "munge -n | unmunge fails; see /var/log/munge/munged.log"

# --- slurm.conf ------------------------------------------------------------------------------
HOST=$(hostname -s)
NCPU=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)   # a bit under total
TMP_CONF=$(mktemp)
trap 'rm -f "$TMP_CONF"' EXIT
cat > "$TMP_CONF" <<EOF
$MARKER
# One-node test cluster: node $HOST, $NCPU CPUs, ${MEM_MB} MB.
ClusterName=carot-local
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/var/spool/slurmctld/slurmctld.pid
SlurmdPidFile=/var/spool/slurmd/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
KillWait=5
OverTimeLimit=0
MinJobAge=300
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

conf_changed=0
if [ ! -e "$CONF" ]; then
    install -d -m 755 /etc/slurm
    install -m 644 "$TMP_CONF" "$CONF"
    conf_changed=1
    log "wrote $CONF"
elif head -n1 "$CONF" | grep -qxF "$MARKER"; then
    if ! cmp -s "$TMP_CONF" "$CONF"; then
        install -m 644 "$TMP_CONF" "$CONF"
        conf_changed=1
        log "rewrote $CONF (it had changed)"
    fi
else
    log "keeping $CONF: it was not written by this script"
fi

mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chmod 755 /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# --- daemons ---------------------------------------------------------------------------------
stop_daemon() {   # stop_daemon NAME PIDFILE: SIGTERM, wait up to 10 s
    local name=$1 pidfile=$2 pid
    pid=$(running_pid "$name" "$pidfile") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do alive "$pid" || return 0; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
}
if [ "$conf_changed" -eq 1 ]; then
    stop_daemon slurmd /var/spool/slurmd/slurmd.pid
    stop_daemon slurmctld /var/spool/slurmctld/slurmctld.pid
fi

if running_pid slurmctld /var/spool/slurmctld/slurmctld.pid >/dev/null; then
    log "slurmctld already running"
else
    log "starting slurmctld"
    rm -f /var/spool/slurmctld/slurmctld.pid
    /usr/sbin/slurmctld
fi
if running_pid slurmd /var/spool/slurmd/slurmd.pid >/dev/null; then
    log "slurmd already running"
else
    log "starting slurmd"
    rm -f /var/spool/slurmd/slurmd.pid
    SLURMD_STARTED=$(date +%s)
    /usr/sbin/slurmd -N "$HOST"
fi

# --- wait for the node -----------------------------------------------------------------------
# slurmd_registered: the running slurmd has registered (slurmctld may show the node idle from
# its saved state before a freshly started slurmd has checked in)
SLURMD_STARTED=${SLURMD_STARTED:-0}
slurmd_registered() {
    [ "$SLURMD_STARTED" -eq 0 ] && return 0
    local t
    t=$(scontrol -o show node "$HOST" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2 || true)
    [ -n "$t" ] && [ "$t" != None ] && [ "$(date -d "$t" +%s 2>/dev/null || echo 0)" -ge $((SLURMD_STARTED - 2)) ]
}
state=""
resumed=0
deadline=$(( $(date +%s) + 30 ))
while :; do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated|completing) slurmd_registered && break ;;
        down*|drain*|fail*)
            if [ "$resumed" -eq 0 ]; then
                log "node is $state; resuming it"
                scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "node state after 30 s: '${state:-no answer}'"
        tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
        die "cluster did not come up"
    fi
    sleep 1
done

VERSION=$(sinfo -V 2>/dev/null | awk '{print $2}')
echo "local SLURM cluster up: node $HOST ($NCPU CPUs, ${MEM_MB} MB) state $state, partition debug, slurm ${VERSION:-?}, $(( $(date +%s) - T0 )) s"
