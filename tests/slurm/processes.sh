# Shared by start-local-cluster.sh and stop-local-cluster.sh (sourced, not run).
# shellcheck shell=bash

alive() {   # alive PID: the process exists and is not a zombie (this sandbox's pid 1 reaps late)
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

running_pid() {   # running_pid NAME PIDFILE: print the pid of a live NAME (pid file, else by exact name)
    local name=$1 pidfile=$2 pid
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && alive "$pid"; then
            echo "$pid"; return 0
        fi
    fi
    for pid in $(pgrep -x "$name" || true); do
        alive "$pid" && { echo "$pid"; return 0; }
    done
    return 1
}
