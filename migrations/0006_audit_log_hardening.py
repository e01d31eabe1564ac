"""Audit log: SQLite refuses REPLACE and upserts; rows are re-hashed over canonical JSON."""
import datetime as dt
import hashlib
import json

from peewee import PostgresqlDatabase

from within_db.canonical import canonical_json
from within_db.errors import MigrationError

MESSAGE = "audit_logs is append-only"
GENESIS = "0" * 64
SELECT_ROWS = ("SELECT id, actor_id, action, target_type, target_id, metadata, ip, created_at, "
               "prev_hash, row_hash FROM audit_logs ORDER BY id")


def legacy_digest(prev, actor, action, target_type, target_id, metadata, ip, created):
    """The row hash of migration 0002's era: json.dumps of the values as Python held them."""
    payload = json.dumps([prev, actor, action, target_type, target_id, metadata, ip, created],
                         sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def canonical_digest(prev, actor, action, target_type, target_id, metadata, ip, created):
    """The row hash from this migration on (services.audit): RFC 8785 text of the stored row."""
    payload = canonical_json([prev, actor, action, target_type, target_id, ip, created,
                              metadata])
    return hashlib.sha256(payload.encode()).hexdigest()


def stored_rows(db):
    """Yield each row as the hash sees it: UUID hyphenated, JSON decoded, instant as text."""
    for (row_id, actor, action, target_type, target_id, metadata, ip, created, prev,
         row_hash) in db.execute_sql(SELECT_ROWS).fetchall():
        if actor is not None:
            actor = str(actor)
            if len(actor) == 32:
                actor = "-".join((actor[:8], actor[8:12], actor[12:16], actor[16:20], actor[20:]))
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        if isinstance(created, dt.datetime):
            created = created.astimezone(dt.UTC).isoformat(" ", "microseconds")
        yield row_id, (actor, action, target_type, target_id, metadata, ip, created), prev, \
            row_hash


def rehash(db, old, new):
    """Check every row and rewrite the chain under ``new``, in id order.

    A row may carry either hash (code of this release may have appended before the
    migration ran). Refuses (and so rolls back) if the chain is already broken: re-hashing it
    would launder the tampering.
    """
    rows = list(stored_rows(db))
    if not rows:
        return
    prev = new_prev = GENESIS
    updates = []
    for row_id, values, stored_prev, stored_hash in rows:
        if stored_prev != prev or stored_hash not in (old(prev, *values), new(prev, *values)):
            raise MigrationError(
                f"the audit chain is already broken at row {row_id}; it is not re-hashed. "
                "Investigate it (`within-db audit verify` on the previous release), then "
                "restore the log from a backup before migrating")
        prev = stored_hash
        new_hash = new(new_prev, *values)
        updates.append((new_prev, new_hash, row_id))
        new_prev = new_hash
    # Rows are immutable through the triggers, which are out of the way for this transaction.
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_no_change")
    else:
        db.execute_sql("DROP TRIGGER audit_logs_no_update")
    # row_hash is UNIQUE: a new hash equal to an old one would need a SHA-256 collision.
    for new_prev, new_hash, row_id in updates:
        db.execute_sql("UPDATE audit_logs SET prev_hash = %s, row_hash = %s WHERE id = %s"
                       .replace("%s", db.param), (new_prev, new_hash, row_id))
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("ALTER TABLE audit_logs ENABLE TRIGGER audit_logs_no_change")
    else:
        db.execute_sql(f"CREATE TRIGGER audit_logs_no_update BEFORE UPDATE ON audit_logs "
                       f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")


def up(migrator, db):
    rehash(db, legacy_digest, canonical_digest)
    if isinstance(db, PostgresqlDatabase):
        return  # no REPLACE; INSERT ... ON CONFLICT DO UPDATE fires the UPDATE trigger
    # REPLACE (and INSERT OR REPLACE) deletes the conflicting row without firing DELETE
    # triggers unless recursive_triggers is on in that connection, and upserts update: refuse
    # every conflicting insert before SQLite resolves the conflict, as PostgreSQL would (and
    # with SQLite's own message, so the violation names the unique index). A BEFORE trigger
    # sees NEW.id = -1 for a generated id, so ids below 1 are refused after the insert.
    db.execute_sql(
        "CREATE TRIGGER audit_logs_no_replace_id BEFORE INSERT ON audit_logs "
        "WHEN EXISTS (SELECT 1 FROM audit_logs WHERE id = NEW.id) "
        "BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: audit_logs.id'); END")
    db.execute_sql(
        "CREATE TRIGGER audit_logs_no_replace_row_hash BEFORE INSERT ON audit_logs "
        "WHEN EXISTS (SELECT 1 FROM audit_logs WHERE row_hash = NEW.row_hash) "
        "BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: audit_logs.row_hash'); END")
    db.execute_sql(
        "CREATE TRIGGER audit_logs_positive_id AFTER INSERT ON audit_logs WHEN NEW.id < 1 "
        "BEGIN SELECT RAISE(ABORT, 'audit_logs is append-only: ids start at 1'); END")


def down(migrator, db):
    if not isinstance(db, PostgresqlDatabase):
        db.execute_sql("DROP TRIGGER audit_logs_no_replace_id")
        db.execute_sql("DROP TRIGGER audit_logs_no_replace_row_hash")
        db.execute_sql("DROP TRIGGER audit_logs_positive_id")
    rehash(db, canonical_digest, legacy_digest)
