"""SQLite: rebuild every table as STRICT, booleans kept 0 or 1 by CHECKs (PostgreSQL: nothing)."""
import re

from peewee import PostgresqlDatabase
from playhouse.migrate import SqliteMigrator

HISTORY_TABLE = "schema_migrations"
BOOLEANS = {"users": ("is_active", "is_superuser"), "scheduled_reports": ("is_active",)}
STRICT_RE = re.compile(r"\)\s*STRICT\s*$", re.IGNORECASE)
CHECKS_RE = re.compile(r' CONSTRAINT "\w+_boolean_check" CHECK \("\w+" IN \(0, 1\)\)')


def strict_type(declared):
    """The STRICT type holding what a column declared as ``declared`` holds today."""
    base = declared.split("(")[0].strip().upper()
    if "INT" in base:
        return "INTEGER"
    if base in ("REAL", "DOUBLE", "DOUBLE PRECISION", "FLOAT"):
        return "REAL"
    if base == "BLOB":
        return "BLOB"
    return "TEXT"  # VARCHAR, DATE, TIMESTAMPTZ, JSON, UUID...: all stored as text


def boolean_check(table, column):
    return f'CONSTRAINT "{table}_{column}_boolean_check" CHECK ("{column}" IN (0, 1))'


def tables(db):
    return [name for (name,) in db.execute_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name <> ? ORDER BY name", (HISTORY_TABLE,))]


def strict_sql(db, table, create):
    """Return ``create`` with STRICT column types, boolean CHECKs and the STRICT option."""
    head, body = SqliteMigrator.column_re.search(re.sub(r"\s+", " ", create)).groups()
    types = {row[1]: row[2] for row in db.execute_sql(f'PRAGMA table_info("{table}")')}
    parts = []
    for part in (p.strip() for p in SqliteMigrator.column_split_re.findall(body)):
        match = re.match(r'"(\w+)" (\S+(?:\([^)]*\))?)', part)
        if match and match.group(1) in types and part.upper().find("CONSTRAINT") != 0:
            column = match.group(1)
            part = f'"{column}" {strict_type(types[column])}{part[match.end():]}'
            if column in BOOLEANS.get(table, ()):
                part += " " + boolean_check(table, column)
        parts.append(part)
    return f"{head.strip()} ({', '.join(parts)}) STRICT"


def plain_sql(create):
    """Return a STRICT table's ``create`` without STRICT and without the boolean CHECKs."""
    return CHECKS_RE.sub("", STRICT_RE.sub(")", create))


def rebuild(db, table, make_sql):
    create, = db.execute_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                             (table,)).fetchone()
    extras = [sql for (sql,) in db.execute_sql(
        "SELECT sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND tbl_name = ? "
        "AND sql IS NOT NULL ORDER BY type, name", (table,))]
    temp = f"{table}__rebuild"
    new = make_sql(create).replace(f'CREATE TABLE "{table}"', f'CREATE TABLE "{temp}"', 1)
    columns = ", ".join(f'"{row[1]}"' for row in db.execute_sql(f'PRAGMA table_info("{table}")'))
    db.execute_sql(new)
    # Values a STRICT column cannot hold (text in a number column) fail here, naming the column.
    db.execute_sql(f'INSERT INTO "{temp}" ({columns}) SELECT {columns} FROM "{table}"')  # noqa: S608
    db.execute_sql(f'DROP TABLE "{table}"')
    db.execute_sql(f'ALTER TABLE "{temp}" RENAME TO "{table}"')
    for sql in extras:  # indexes and triggers (audit_logs' append-only ones) went with the table
        db.execute_sql(sql)


def up(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        return
    for table in tables(db):
        rebuild(db, table, lambda create, table=table: strict_sql(db, table, create))


def down(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        return
    for table in tables(db):
        rebuild(db, table, plain_sql)
