#!/usr/bin/env bash
# Start a local PostgreSQL server for the tests (Debian/Ubuntu, run as root) and print its URL.
#
#   URL=$(tests/postgres/start-local-postgres.sh)   # postgresql://carot:carot@127.0.0.1:5432/carot_test
#   tests/postgres/stop-local-postgres.sh
#
# Uses the Debian cluster "main" of the newest installed PostgreSQL (installs the `postgresql`
# package and creates the cluster if missing), started by pg_ctlcluster so that it listens on
# 127.0.0.1 only (the cluster's config files are not changed). Creates the login role `carot`
# (password `carot`) and the database `carot_test` owned by it if missing.
# Idempotent. Progress goes to stderr; the URL is the only (and last) line on stdout.
set -euo pipefail

ROLE=carot
PASSWORD=carot
DB=carot_test
CLUSTER=main

log() { echo "[start-local-postgres] $*" >&2; }
die() { echo "[start-local-postgres] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it may install packages and runs commands as postgres)"

# shellcheck disable=SC2012  # version folders: 15, 16, ...
latest_version() { ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1; }

VERSION=$(latest_version)
if [ -z "$VERSION" ] || [ ! -x "/usr/lib/postgresql/$VERSION/bin/postgres" ] || ! command -v pg_ctlcluster >/dev/null; then
    log "installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
    VERSION=$(latest_version)
fi
[ -n "$VERSION" ] || die "no PostgreSQL server found under /usr/lib/postgresql"

if [ -z "$(pg_lsclusters -h "$VERSION" "$CLUSTER" 2>/dev/null)" ]; then
    log "creating cluster $VERSION/$CLUSTER"
    pg_createcluster "$VERSION" "$CLUSTER" >&2
fi

PORT=$(pg_conftool -s "$VERSION" "$CLUSTER" show port)
# Unix socket directory (under /run, so gone after a reboot of a container without systemd)
install -d -o postgres -g postgres -m 2775 /var/run/postgresql

status=$(pg_lsclusters -h "$VERSION" "$CLUSTER" | awk '{print $4}')
if [ "$status" = "online" ]; then
    log "cluster $VERSION/$CLUSTER already running on port $PORT"
else
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "port $PORT is already taken by another program (cluster $VERSION/$CLUSTER is $status)"
    fi
    log "starting cluster $VERSION/$CLUSTER on 127.0.0.1:$PORT"
    # a pid file left by a killed server is handled by pg_ctl (it checks the pid)
    pg_ctlcluster -o "-c listen_addresses=127.0.0.1" "$VERSION" "$CLUSTER" start >&2
fi

ok=0
for _ in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1 -p "$PORT"; then ok=1; break; fi
    sleep 0.5
done
[ "$ok" -eq 1 ] || die "server not ready after 30 s; see /var/log/postgresql/postgresql-$VERSION-$CLUSTER.log"

psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres "$@"; }

if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]; then
    log "creating role $ROLE"
    psql_admin -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"
else
    psql_admin -c "ALTER ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"   # make sure the password is right
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
    log "creating database $DB"
    psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
fi

URL="postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
PGPASSWORD=$PASSWORD psql -X -q -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DB" -tAc "SELECT 1" >/dev/null \
    || die "cannot log in as $ROLE over TCP (check pg_hba.conf for 127.0.0.1/32)"
log "PostgreSQL $VERSION up on 127.0.0.1:$PORT"
echo "$URL"
