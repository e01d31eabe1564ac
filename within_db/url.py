"""Parse and redact database URLs; nothing here opens a connection or prints a password.

A malformed URL is refused with a ConfigurationError that says what is wrong and how to write
it, without echoing the URL when its password may have spilled into another part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import psycopg2.extensions

from within_db.errors import ConfigurationError

__all__ = ["DEFAULT_URL", "SCHEMES", "DatabaseURL", "parse_url", "redact_url"]

DEFAULT_URL = "sqlite:///within.db"
SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+pool", "postgres+pool")
_ENCODE = ("percent-encode the user name and password (@ as %40, / as %2F, ? as %3F, "
           "# as %23, : as %3A)")

# Query-string options the database classes take themselves; libpq's own keywords (for
# PostgreSQL) are checked by the driver's parser, so the list never goes stale.
SQLITE_OPTIONS = frozenset({"timeout", "cached_statements", "check_same_thread"})
POSTGRES_OPTIONS = frozenset({"autorollback", "isolation_level", "register_hstore"})
POOL_OPTIONS = frozenset({"max_connections", "stale_timeout", "timeout"})


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed URL: ``kind`` is sqlite or postgres; ``options`` come from the query string."""

    kind: str
    pooled: bool
    database: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def connect_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of the database class (options included)."""
        out: dict[str, Any] = {}
        for name in ("user", "password", "host", "port"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return {**out, **self.options}


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if port:
        host = f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        shown = scheme if scheme.isascii() and scheme.replace("+", "").isalnum() else ""
        shown = f'"{shown}"' if shown else "in the URL"
        raise ConfigurationError(
            f"unsupported database URL scheme {shown}; accepted schemes: {', '.join(SCHEMES)} "
            f"(e.g. {DEFAULT_URL} or postgresql://user@host:5432/dbname)")
    return scheme


def _value(text: str) -> Any:
    # the conversions playhouse.db_url applies, so existing URLs keep their meaning
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if text.isdigit():
        return int(text)
    if "." in text and all(p.isdigit() for p in text.split(".", 1)):
        return float(text)
    if lowered in ("null", "none"):
        return None
    return text


def _options(query: str, allowed: frozenset[str], libpq: bool) -> dict[str, Any]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigurationError(
            "malformed query string in the database URL; expected ?name=value&name=value"
        ) from None
    options = {}
    for key, text in pairs:
        if key not in allowed and not (libpq and _is_libpq_option(key)):
            known = ", ".join(sorted(allowed))
            if libpq:
                known += " or a libpq connection parameter (connect_timeout, sslmode, ...)"
            raise ConfigurationError(
                f'unknown database URL option "{key}"; accepted: {known}')
        options[key] = _value(text)
    return options


def _is_libpq_option(key: str) -> bool:
    try:
        psycopg2.extensions.parse_dsn(psycopg2.extensions.make_dsn(**{key: "1"}))
    except psycopg2.ProgrammingError:
        return False
    return True


def _parse_sqlite(url: str) -> DatabaseURL:
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        raise ConfigurationError(
            "an SQLite URL takes three slashes before a relative path (sqlite:///within.db) "
            "and four before an absolute one (sqlite:////var/data/within.db)")
    path, _, query = rest[1:].partition("?")
    return DatabaseURL("sqlite", False, path or ":memory:",
                       options=_options(query, SQLITE_OPTIONS, libpq=False))


def _parse_postgres(url: str, scheme: str) -> DatabaseURL:
    parts = urlsplit(url)
    # An unencoded @ / ? or # in the password moves the rest of the URL into the path, query or
    # fragment; say so without printing any of it.
    keys = [pair.split("=", 1)[0] for pair in parts.query.split("&")]
    if "@" in parts.path or any("@" in k for k in keys) or parts.fragment \
            or parts.netloc.count("@") > 1:
        raise ConfigurationError(
            f"malformed database URL: an @ or # appears after the host; {_ENCODE}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ConfigurationError(
            "malformed database URL: the port must be a number from 1 to 65535 "
            f"(postgresql://user@host:5432/dbname); if the password holds special characters, "
            f"{_ENCODE}")
    name = unquote(parts.path[1:])
    if not name:
        raise ConfigurationError(
            f"database URL {redact_url(url)} names no database; "
            "expected postgresql://user@host:5432/dbname")
    if "/" in name:
        raise ConfigurationError(
            f'the database name in {redact_url(url)} contains "/"; '
            "expected postgresql://user@host:5432/dbname")
    pooled = scheme.endswith("+pool")
    allowed = POSTGRES_OPTIONS | (POOL_OPTIONS if pooled else frozenset())
    return DatabaseURL(
        "postgres", pooled, name,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        host=parts.hostname or None, port=port,
        options=_options(parts.query, allowed, libpq=True))


def parse_url(url: str) -> DatabaseURL:
    """Parse a database URL; ConfigurationError (never echoing a password) if it is malformed.

    Refused: unknown schemes, ``sqlite://`` with two slashes, bad ports, an unencoded ``@``,
    ``/``, ``?`` or ``#`` in the password, and query options the backend does not know.
    """
    scheme = _scheme(url)
    if scheme.startswith("postgres"):  # postgresql, postgres and their +pool variants
        return _parse_postgres(url, scheme)
    return _parse_sqlite(url)
