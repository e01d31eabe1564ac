"""The database proxy every model uses, and how it gets bound.

``connect()`` turns a URL into a configured peewee database (SQLite with its pragmas, or
PostgreSQL with server-side cursors, UTC sessions and a connect timeout) and binds the proxy.
Nothing in this package ever prints a password. One module per concern:

- ``common``: the proxy, logging filter, bulk-load signals, month partitions' names and bounds;
- ``sqlite`` and ``postgres``: one class per backend owning every backend difference;
- ``pg_partitions``: PostgreSQL's monthly partitions and the guard tables of their unique columns;
- ``replica``: read replicas (health, lag, routing, read-your-writes);
- ``connection``: URL -> database, ``connect()``, ``get_db()`` and the bound-database helpers.
"""

from within_db.db.common import (
    BUSY_TIMEOUT,
    CONNECT_TIMEOUT,
    BrokenForeignKeys,
    BulkLoadFailed,
    Partition,
    bound,
    database,
    json_loads,
    month_start,
    next_month,
    partition_meta,
    partition_name,
    partition_parent,
)
from within_db.db.connection import (
    Backend,
    backend,
    connect,
    get_db,
    make_database,
    read_your_writes,
    reading,
    write_transaction,
)
from within_db.db.pg_partitions import guard_sql
from within_db.db.postgres import PooledPostgresDatabase, PostgresDatabase
from within_db.db.replica import MAX_REPLICA_LAG, REPLICA_WAIT, Replica, replica_read
from within_db.db.sqlite import SqliteDatabase
from within_db.url import DEFAULT_URL, SCHEMES, redact_url

__all__ = [
    "BUSY_TIMEOUT", "Backend", "BrokenForeignKeys", "BulkLoadFailed", "CONNECT_TIMEOUT",
    "DEFAULT_URL", "MAX_REPLICA_LAG", "Partition", "PooledPostgresDatabase", "PostgresDatabase",
    "REPLICA_WAIT", "Replica", "SCHEMES", "SqliteDatabase", "backend", "bound", "connect",
    "database", "get_db", "guard_sql", "json_loads", "make_database", "month_start",
    "next_month", "partition_meta", "partition_name", "partition_parent", "read_your_writes",
    "reading", "redact_url", "replica_read", "write_transaction",
]
