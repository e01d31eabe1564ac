#!/usr/bin/env bash
# Stop the streaming replica that scripts/ensure_replica.sh keeps on 127.0.0.1:5433 (a no-op when
# it is not running); scripts/ensure_replica.sh starts it again.
# With --drop, also delete the replica cluster and its replication slot on the primary, so the
# next ensure_replica.sh builds a fresh one (the primary's pg_hba.conf lines are kept).
set -euo pipefail
CLUSTER=replica
SLOT=within_db_replica
version=$(ls /etc/postgresql | sort -n | tail -n 1)

case "${1:-}" in
    "") drop= ;;
    --drop) drop=1 ;;
    *) echo "usage: $0 [--drop]" >&2; exit 2 ;;
esac

if [ ! -f "/etc/postgresql/$version/$CLUSTER/postgresql.conf" ]; then
    echo "stop_replica: no cluster $version/$CLUSTER" >&2
elif pg_ctlcluster "$version" "$CLUSTER" status >/dev/null 2>&1; then
    echo "stop_replica: stopping $version/$CLUSTER" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" "$CLUSTER" stop -m fast
fi

if [ -n "$drop" ]; then
    if [ -f "/etc/postgresql/$version/$CLUSTER/postgresql.conf" ]; then
        echo "stop_replica: dropping cluster $version/$CLUSTER" >&2
        pg_dropcluster "$version" "$CLUSTER"
    fi
    rm -rf "/var/lib/postgresql/$version/$CLUSTER.new"
    # The slot would otherwise keep WAL (and, through hot_standby_feedback, old rows) on the primary.
    runuser -u postgres -- psql -X -q -At -p 5432 -d postgres -c \
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots
          where slot_name = '$SLOT' and not active" >/dev/null
fi
