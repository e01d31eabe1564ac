"""Least-privilege PostgreSQL roles: an owner that migrates, an application that cannot
rewrite history.

The owner role owns every table, sequence and function of the schema; the app role gets DML on
the domain tables, only SELECT and INSERT on ``audit_logs``, SELECT on the migration history,
and nothing else: no DDL, no TRUNCATE, no trigger changes. SQLite has no roles.
"""

from __future__ import annotations

import re

from within_db.boundary import public_api
from within_db.db import Backend, bound
from within_db.errors import ConfigurationError, ValidationError
from within_db.migrate import HISTORY_TABLE

__all__ = ["APPEND_ONLY_TABLES", "role_setup_sql", "setup_roles"]

#: tables the app role may read and append to, never change
APPEND_ONLY_TABLES = ("audit_logs",)
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


def _quote(name: str) -> str:
    return '"' + name + '"'


def _check_names(db: Backend, owner: str, app: str) -> None:
    for what, name in (("owner", owner), ("app", app)):
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValidationError(f"{what} role: expected a lower-case PostgreSQL name "
                                  "(letters, digits, _; at most 63), e.g. within_app")
    if owner == app:
        raise ValidationError("the owner and app roles must differ: the owner can disable "
                              "the audit triggers")
    found = dict(db.execute_sql(
        "SELECT rolname, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname IN (%s, %s)",
        (owner, app)).fetchall())
    for what, name in (("owner", owner), ("app", app)):
        if name not in found:
            raise ValidationError(f'{what} role "{name}" does not exist; create it first: '
                                  f"CREATE ROLE {name} LOGIN PASSWORD '...'")
    if found[app]:
        raise ValidationError(f'app role "{app}" is a superuser (or bypasses row security): '
                              "it would bypass every privilege")
    (member, owns_db, owns_schema), = db.execute_sql(
        "SELECT pg_has_role(%s, %s, 'MEMBER'), "
        "pg_has_role(%s, (SELECT datdba FROM pg_database WHERE datname = current_database()), "
        "'MEMBER'), "
        "pg_has_role(%s, (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()), "
        "'MEMBER')", (app, owner, app, app)).fetchall()
    if member or owns_db or owns_schema:
        whose = "the owner role" if member else "the database" if owns_db else "the schema"
        raise ValidationError(f'app role "{app}" is (a member of) the owner of {whose}: it '
                              "could drop or alter the tables; use a role that owns nothing")


@public_api
def role_setup_sql(owner: str, app: str, db: Backend | None = None) -> list[str]:
    """Return the statements that give ``owner`` the schema and ``app`` least privilege.

    Reads the live schema (tables, sequences not owned by a column, functions), so run it
    again after every migration that adds a table: new tables stay closed to the app role
    until then. Raises ConfigurationError on SQLite and ValidationError for a role that is
    missing, a superuser, or the owner's, the database's or the schema's owner (as app).
    """
    db = bound(db)
    if not db.has_roles:
        raise ConfigurationError("roles need PostgreSQL: SQLite has no roles; protect the "
                                 "database file with file-system permissions instead")
    _check_names(db, owner, app)
    schema, = db.execute_sql("SELECT current_schema()").fetchone()
    tables = db.table_names()
    sequences = [name for (name,) in db.execute_sql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'S' AND n.nspname = current_schema() AND NOT EXISTS ("
        "SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')) "
        "ORDER BY 1").fetchall()]
    functions = [signature for (signature,) in db.execute_sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = current_schema() "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid "
        "AND d.deptype = 'e') ORDER BY 1").fetchall()]
    o, a, s = _quote(owner), _quote(app), _quote(schema)
    sql = [f"GRANT USAGE, CREATE ON SCHEMA {s} TO {o}",
           f"REVOKE CREATE ON SCHEMA {s} FROM PUBLIC",
           f"REVOKE ALL ON SCHEMA {s} FROM {a}",
           f"GRANT USAGE ON SCHEMA {s} TO {a}"]
    sql += [f"ALTER TABLE {s}.{_quote(t)} OWNER TO {o}" for t in tables]
    sql += [f"ALTER SEQUENCE {s}.{_quote(q)} OWNER TO {o}" for q in sequences]
    sql += [f"ALTER FUNCTION {f} OWNER TO {o}" for f in functions]
    sql += [f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM PUBLIC, {a}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM PUBLIC, {a}"]
    domain = [t for t in tables if t not in APPEND_ONLY_TABLES and t != HISTORY_TABLE]
    if domain:
        names = ", ".join(f"{s}.{_quote(t)}" for t in domain)
        sql.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {names} TO {a}")
    for table in APPEND_ONLY_TABLES:
        if table in tables:
            sql.append(f"GRANT SELECT, INSERT ON {s}.{_quote(table)} TO {a}")
    if HISTORY_TABLE in tables:
        sql.append(f"GRANT SELECT ON {s}.{_quote(HISTORY_TABLE)} TO {a}")
    sql.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {a}")
    return sql


@public_api
def setup_roles(owner: str, app: str, db: Backend | None = None) -> list[str]:
    """Apply ``role_setup_sql`` in one transaction and return the statements run.

    Run it as a superuser (or the database owner) after ``migrate up``; it is idempotent.
    """
    db = bound(db)
    with db.connection_context(), db.atomic():
        statements = role_setup_sql(owner, app, db)
        for statement in statements:
            db.execute_sql(statement)
    return statements
