#!/usr/bin/env bash
# Make sure a streaming replica of the local primary (127.0.0.1:5432) answers, in recovery, on
# 127.0.0.1:5433. Idempotent: a streaming replica is left alone (two queries, ~0.1 s), a stopped
# one is started, and a missing, half-built, promoted or foreign one is (re)built with
# pg_basebackup -R -X stream as the Debian cluster "<version> replica".
#
# The primary is only touched by: replication lines appended to its pg_hba.conf when missing
# (followed by a reload, never a restart) and a physical replication slot created when missing.
# Run as root (CI does). Stop the replica with scripts/stop_replica.sh, start it with this script,
# or by hand:
#   pg_ctlcluster --skip-systemctl-redirect 15 replica stop -m fast
#   pg_ctlcluster --skip-systemctl-redirect 15 replica start
set -euo pipefail

PRIMARY_PORT=5432
REPLICA_PORT=5433
CLUSTER=replica
SLOT=within_db_replica
TIMEOUT=${ENSURE_REPLICA_TIMEOUT:-60}
CHECK_USER=${ENSURE_REPLICA_USER:-root}
MARK="# added by within_db scripts/ensure_replica.sh"

log() { echo "ensure_replica: $*" >&2; }
die() { echo "ensure_replica: ERROR: $*" >&2; exit 1; }

# Run a command as the cluster owner.
as_postgres() { runuser -u postgres -- "$@"; }
# Run a command silently; show its output only when it fails.
quiet() {
    local out
    if ! out=$("$@" 2>&1); then printf '%s\n' "$out" >&2; return 1; fi
}
# Queries on the primary as clients make them (TCP on 127.0.0.1).
primary_q() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$CHECK_USER" -d postgres -c "$1"; }
# Administrative SQL on the primary, as postgres over the local socket.
primary_sql() { as_postgres psql -X -q -At -v ON_ERROR_STOP=1 -p "$PRIMARY_PORT" -d postgres -c "$1"; }
# The replica as clients see it: TCP on 127.0.0.1. Prints "in_recovery|system_identifier|receiver".
replica_state() {
    psql -X -At -h 127.0.0.1 -p "$REPLICA_PORT" -U "$CHECK_USER" -d postgres -c \
        "select pg_is_in_recovery(), (select system_identifier from pg_control_system()),
                coalesce((select status from pg_stat_wal_receiver), 'none')" 2>/dev/null || true
}

here=$(cd "$(dirname "$0")" && pwd)
bash "$here/ensure_postgres.sh"
version=$(ls /etc/postgresql | sort -n | tail -n 1)
confdir=/etc/postgresql/$version/$CLUSTER
conf_file=$confdir/conf.d/90-within-db-replica.conf
IFS='|' read -r primary_id hba_file <<<"$(primary_q \
    "select system_identifier, current_setting('hba_file') from pg_control_system()")"
[ -n "$primary_id" ] && [ -f "$hba_file" ] \
    || die "cannot query the primary as $CHECK_USER on 127.0.0.1:$PRIMARY_PORT (set ENSURE_REPLICA_USER)"

# A hot standby refuses to run with any of these below the primary's value.
mirrored=$(primary_q "select string_agg(name || ' = ' || setting, E'\n' order by name) from pg_settings
    where name in ('max_connections', 'max_worker_processes', 'max_wal_senders',
                   'max_prepared_transactions', 'max_locks_per_transaction')")
conf="# Managed by within_db scripts/ensure_replica.sh: rewritten on every run.
listen_addresses = '127.0.0.1'
port = $REPLICA_PORT
ssl = off
hot_standby = on
hot_standby_feedback = on             # the primary's vacuum spares rows replica queries still see
max_standby_streaming_delay = 5s      # replay waits at most 5 s for conflicting replica queries
max_standby_archive_delay = 5s
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 1s      # reconnect quickly after the primary restarts
# PostgreSQL 15 replays DROP DATABASE only once every process has absorbed a barrier, and the
# checkpointer absorbs it only between restartpoints: spread (completion target 0.9) and
# fsyncing ~30k files of the test databases, each took 90-110 s on a busy disk and stalled replay
# that long, again and again. This replica is disposable (rebuilt from the primary when in
# doubt), so its restartpoints write at full speed and skip fsync: they take about a second.
checkpoint_completion_target = 0
fsync = off
# Same as the primary (hot standby requires >=):
$mirrored"

# Fast path: already a streaming replica of this primary, configured as this script would.
same_files() {
    local f
    [ "$(cat "$conf_file" 2>/dev/null)" = "$conf" ] || return 1
    for f in pg_hba.conf pg_ident.conf; do
        cmp -s "$(dirname "$hba_file")/$f" "$confdir/$f" || return 1
    done
}
if [ "$(replica_state)" = "t|$primary_id|streaming" ] && same_files; then
    # A test that paused replay (to make the replica lag) and died would leave it paused.
    if [ "$(psql -X -At -h 127.0.0.1 -p "$REPLICA_PORT" -U "$CHECK_USER" -d postgres -c \
            "select pg_is_wal_replay_paused()" 2>/dev/null)" = t ]; then
        log "resuming WAL replay on the replica (it was paused)"
        psql -X -q -At -h 127.0.0.1 -p "$REPLICA_PORT" -U "$CHECK_USER" -d postgres -c \
            "select pg_wal_replay_resume()" >/dev/null
    fi
    log "replica $version/$CLUSTER already streaming on 127.0.0.1:$REPLICA_PORT"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root to create or start the replica"
start=$SECONDS
exec 9>/tmp/within_db_ensure_replica.lock
flock -w 120 9 || die "another ensure_replica.sh holds /tmp/within_db_ensure_replica.lock"

# --- the primary: settings, pg_hba.conf, slot ------------------------------------------------
IFS='|' read -r wal_level max_senders max_slots slots has_slot tablespaces <<<"$(primary_sql "
    select current_setting('wal_level'), current_setting('max_wal_senders'),
           current_setting('max_replication_slots'),
           (select count(*) from pg_replication_slots),
           exists(select 1 from pg_replication_slots where slot_name = '$SLOT'),
           (select count(*) from pg_tablespace where spcname not in ('pg_default', 'pg_global'))")"
case "$wal_level" in
    replica|logical) ;;
    "") die "cannot query the primary as postgres over its socket" ;;
    *) die "primary has wal_level=$wal_level; streaming replication needs replica (needs a primary restart)" ;;
esac
[ "$max_senders" -ge 2 ] || die "primary has max_wal_senders=$max_senders; need at least 2 (needs a primary restart)"
if [ "$has_slot" != t ] && [ "$slots" -ge "$max_slots" ]; then
    die "primary has no free replication slot (max_replication_slots=$max_slots, in use: $slots)"
fi
[ "$tablespaces" -eq 0 ] || die "primary has user tablespaces; a same-host base backup would collide with them"

hba_changed=
if ! grep -Eq '^[[:space:]]*local[[:space:]]+replication[[:space:]]+all[[:space:]]+trust' "$hba_file"; then
    printf '%s\nlocal   replication     all                                     trust\n' "$MARK" \
        | as_postgres tee -a "$hba_file" >/dev/null
    hba_changed=1
fi
if ! grep -Eq '^[[:space:]]*host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba_file"; then
    printf '%s\nhost    replication     all             127.0.0.1/32            trust\n' "$MARK" \
        | as_postgres tee -a "$hba_file" >/dev/null
    hba_changed=1
fi
if [ -n "$hba_changed" ]; then
    log "added replication lines to $hba_file; reloading the primary"
    [ "$(primary_sql "select pg_reload_conf()")" = t ] || die "could not reload the primary"
fi
# A reload is asynchronous: wait until a replication connection is accepted.
repl_conn="host=127.0.0.1 port=$PRIMARY_PORT user=postgres application_name=$SLOT"
for _ in $(seq 1 50); do
    as_postgres psql -X -q -At -w "$repl_conn replication=true" -c IDENTIFY_SYSTEM >/dev/null 2>&1 && break
    sleep 0.1
done
as_postgres psql -X -q -At -w "$repl_conn replication=true" -c IDENTIFY_SYSTEM >/dev/null \
    || die "the primary refuses replication connections from 127.0.0.1 (see $hba_file)"

if [ "$has_slot" != t ]; then
    log "creating physical replication slot $SLOT on the primary"
    primary_sql "select pg_create_physical_replication_slot('$SLOT', true)" >/dev/null
fi

# --- the replica cluster: config -------------------------------------------------------------
if [ ! -f "$confdir/postgresql.conf" ]; then
    log "creating cluster $version/$CLUSTER on port $REPLICA_PORT"
    # initdb --no-sync: this data directory is replaced by the base backup below.
    quiet pg_createcluster "$version" "$CLUSTER" -p "$REPLICA_PORT" -- --no-sync
fi
datadir=$(pg_conftool -s "$version" "$CLUSTER" show data_directory)
[ -n "$datadir" ] || die "cannot read data_directory of cluster $version/$CLUSTER"

# Authentication as on the primary, so clients connect to both the same way.
conf_changed=
for f in pg_hba.conf pg_ident.conf; do
    src=$(dirname "$hba_file")/$f
    if ! cmp -s "$src" "$confdir/$f"; then
        as_postgres cp "$src" "$confdir/$f"
        conf_changed=1
    fi
done
conf_file=$confdir/conf.d/90-within-db-replica.conf
if [ "$(cat "$conf_file" 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" | as_postgres tee "$conf_file" >/dev/null
    conf_changed=1
fi

# --- the replica cluster: data ---------------------------------------------------------------
running() { pg_ctlcluster "$version" "$CLUSTER" status >/dev/null 2>&1; }
# The server must not inherit the lock's descriptor, or it would hold the lock for its lifetime.
pgctl() { pg_ctlcluster --skip-systemctl-redirect "$version" "$CLUSTER" "$@" 9>&-; }
data_ok() {
    [ -f "$datadir/PG_VERSION" ] && [ -f "$datadir/standby.signal" ] || return 1
    local id
    id=$(as_postgres "/usr/lib/postgresql/$version/bin/pg_controldata" "$datadir" 2>/dev/null \
        | sed -n 's/^Database system identifier: *//p')
    [ "$id" = "$primary_id" ]
}
if ! data_ok; then
    if running; then
        log "stopping $version/$CLUSTER: its data is not a standby of this primary"
        pgctl stop -m immediate
    fi
    log "taking a base backup of the primary into $datadir"
    rm -rf "$datadir.new"
    mkdir -m 700 "$datadir.new"   # as root: Debian leaves /var/lib/postgresql/<version> to root
    chown postgres:postgres "$datadir.new"
    # --no-sync: the replica fsyncs its whole data directory when it first starts anyway (its
    # pg_control says "in production"), and pg_basebackup's own fsync pass took 30 s on a busy disk.
    quiet as_postgres pg_basebackup -D "$datadir.new" -d "$repl_conn" -w -R -X stream -S "$SLOT" \
        -c fast --no-sync
    # ALTER SYSTEM settings of the primary come along; drop those naming its address or files.
    as_postgres sed -i -E '/^[[:space:]]*(port|listen_addresses|data_directory|hba_file|ident_file|external_pid_file|cluster_name)[[:space:]]*=/d' \
        "$datadir.new/postgresql.auto.conf"
    rm -rf "$datadir"
    mv "$datadir.new" "$datadir"
fi

if running; then
    if [ -n "$conf_changed" ]; then
        log "restarting $version/$CLUSTER for its new configuration"
        quiet pgctl restart -m fast
    fi
else
    log "starting $version/$CLUSTER"
    quiet pgctl start \
        || { tail -n 10 "/var/log/postgresql/postgresql-$version-$CLUSTER.log" >&2 || true
             die "cluster $version/$CLUSTER did not start"; }
fi

# --- wait until clients see a replica in recovery that streams from the primary --------------
deadline=$((SECONDS + TIMEOUT))
state=
while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(replica_state)
    [ "$state" = "t|$primary_id|streaming" ] && break
    sleep 0.2
done
if [ "$state" != "t|$primary_id|streaming" ]; then
    tail -n 10 "/var/log/postgresql/postgresql-$version-$CLUSTER.log" >&2 || true
    die "no streaming replica on 127.0.0.1:$REPLICA_PORT after ${TIMEOUT}s (last state: '${state:-no answer}');" \
        "rebuild it with: bash scripts/stop_replica.sh --drop && bash scripts/ensure_replica.sh"
fi
log "replica $version/$CLUSTER streaming on 127.0.0.1:$REPLICA_PORT ($((SECONDS - start))s)"
