#!/usr/bin/env bash
# Stop the PostgreSQL cluster started by tests/postgres/start-local-postgres.sh (fast shutdown:
# open connections are closed). Succeeds when it is not running or not installed.
set -euo pipefail

CLUSTER=main
log() { echo "[stop-local-postgres] $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "ERROR: run as root"; exit 1; }

if ! command -v pg_lsclusters >/dev/null; then
    echo "local PostgreSQL stopped (not installed)"
    exit 0
fi
# shellcheck disable=SC2012  # version folders: 15, 16, ...
VERSION=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)
if [ -n "$VERSION" ] && [ -n "$(pg_lsclusters -h "$VERSION" "$CLUSTER" 2>/dev/null)" ]; then
    status=$(pg_lsclusters -h "$VERSION" "$CLUSTER" | awk '{print $4}')
    if [ "$status" = "online" ]; then
        log "stopping cluster $VERSION/$CLUSTER"
        rc=0
        pg_ctlcluster "$VERSION" "$CLUSTER" stop >&2 || rc=$?   # fast mode; 2 means "was not running"
        [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || exit "$rc"
    fi
fi
echo "local PostgreSQL stopped"
