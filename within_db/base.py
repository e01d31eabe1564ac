"""BaseModel on the database proxy, the timestamp base, JSON-safe dicts and CHECK helpers.

Indexes and constraints are never declared here: peewee inherits them into every model.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import peewee
from playhouse.migrate import SqliteMigrator

from within_db.db import database
from within_db.errors import ValidationError
from within_db.fields import AutoField, UTCDateTimeField, codec_of, utcnow

__all__ = [
    "BaseModel", "MAX_IDENTIFIER", "TimestampedModel", "check", "constraint_name", "currency_code",
    "jsonable", "non_negative", "one_of", "separated_by",
]

MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names silently


def jsonable(value: Any) -> Any:
    """Return ``value`` as a JSON-serialisable object (UUID, datetimes, dates, Decimal as text)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot make {type(value).__name__} JSON-serialisable")


def _json_converter(field: peewee.Field, db: Any) -> Callable[[Any], Any] | None:
    """Return f(raw database value) -> the value ``to_dict()`` gives, or None for identity."""
    codec = codec_of(field)
    read = codec.reader(db) if codec.python_type is not object else field.python_value
    if codec.json_native:
        return read
    if read is None:
        return jsonable

    def convert(value: Any) -> Any:
        return jsonable(read(value))

    return convert


class _Metadata(peewee.Metadata):
    """Model metadata whose ``strict_tables`` follows the database (STRICT on SQLite)."""

    @property
    def strict_tables(self) -> bool:
        return bool(self._strict or getattr(self.database, "strict_tables", False))

    @strict_tables.setter
    def strict_tables(self, value: bool | None) -> None:
        self._strict = value


class BaseModel(peewee.Model):
    """Every within_db model: bound to the proxy, flat secret-free ``to_dict()``."""

    # Every within_db model's primary key is ``id``: this integer, or a UUID where declared.
    id: Any = AutoField()

    class Meta:
        database = database
        legacy_table_names = False
        model_metadata_class = _Metadata  # STRICT tables where the database has them

    @classmethod
    def _normalize_data(cls, data: Any, kwargs: dict[str, Any]) -> Any:
        # peewee renders a model instance as its primary key wherever it appears, and skips
        # the field's db_value for it (a model is a Node): is_superuser=<a Permission> would
        # store True. Instances belong only in foreign keys (save, create, insert, update).
        normalized = super()._normalize_data(data, kwargs)  # type: ignore[misc]
        if isinstance(normalized, dict):
            for field, value in normalized.items():
                if isinstance(value, peewee.Model) and isinstance(field, peewee.Field) \
                        and not isinstance(field, peewee.ForeignKeyField):
                    label = f"{cls.__name__}.{field.name}"
                    raise ValidationError(f"{label}: expected a value, got a "
                                          f"{type(value).__name__} instance")
        return normalized

    @classmethod
    def public_fields(cls) -> list[peewee.Field]:
        """The fields ``to_dict()`` shows, in column order (private fields left out)."""
        private = getattr(cls._meta, "private_fields", ())
        return [f for f in cls._meta.sorted_fields if f.name not in private]

    @classmethod
    def json_rows(cls, query: peewee.SelectQuery) -> list[dict[str, Any]]:
        """Run ``query`` (selecting ``public_fields()``) and return ``to_dict()``-equal dicts.

        Converts raw rows directly, skipping model instances: the fast path for reads that
        end as JSON.
        """
        fields = cls.public_fields()
        keys = [f.column_name if isinstance(f, peewee.ForeignKeyField) else f.name
                for f in fields]
        db = cls._meta.database
        plan = [(i, key, conv) for i, (key, conv) in
                enumerate(zip(keys, (_json_converter(f, db) for f in fields), strict=True))
                if conv]
        out = []
        for row in cls._meta.database.execute(query):  # raw rows: no peewee conversion
            item = dict(zip(keys, row, strict=True))
            for i, key, conv in plan:
                value = row[i]
                if value is not None:
                    item[key] = conv(value)
            out.append(item)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the row's columns as JSON-safe values; foreign keys as ids, secrets omitted."""
        private = getattr(self._meta, "private_fields", ())
        out = {}
        for field in self._meta.sorted_fields:
            if field.name in private:
                continue
            key = field.column_name if isinstance(field, peewee.ForeignKeyField) else field.name
            out[key] = jsonable(self.__data__.get(field.name))
        return out


class TimestampedModel(BaseModel):
    """Adds ``created_at`` and ``updated_at`` (aware UTC); ``save()`` refreshes ``updated_at``."""

    created_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    def save(self, *args: Any, **kwargs: Any) -> int:
        if self.get_id() is not None and not kwargs.get("force_insert"):
            self.updated_at = utcnow()
        return super().save(*args, **kwargs)


def check(table: str, rule: str, expression: str) -> peewee.SQL | peewee.NodeList:
    """Return a CHECK constraint named ``<table>_<rule>_check``.

    Refuses (at import) an expression that playhouse's SQLite table rebuild cannot parse,
    which would make every later ALTER of the table fail on SQLite.
    """
    name = constraint_name(table, rule, "check")
    text = f'CONSTRAINT "{name}" CHECK ({expression})'
    if len(SqliteMigrator.column_split_re.findall(text)) != 1:
        raise ValueError(f"{name}: playhouse's SQLite rebuild cannot split this expression; "
                         "avoid a comma after a nested call such as f(g(x), y)")
    return peewee.Check(expression, name=name)


def constraint_name(table: str, rule: str, suffix: str) -> str:
    name = f"{table}_{rule}_{suffix}" if suffix else f"{table}_{rule}"
    if len(name) > MAX_IDENTIFIER:
        raise ValueError(f"constraint name {name!r} is longer than {MAX_IDENTIFIER} characters")
    return name


def choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    """Return peewee ``choices`` for a field whose CHECK is ``one_of(column, values)``.

    The schemas read them (``within_db.schemas``); a test keeps them equal to the CHECK.
    """
    return [(v, v) for v in values]


def one_of(column: str, values: tuple[str, ...]) -> str:
    """Render ``column IN (...)`` for a CHECK over a module constant of allowed values."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


def currency_code(column: str = "currency") -> str:
    """Render a CHECK expression for a 3-letter upper-case currency code."""
    letters = " AND ".join(
        f"substr({column}, {i}, 1) BETWEEN 'A' AND 'Z'" for i in (1, 2, 3)
    )
    return f"length({column}) = 3 AND {column} = upper({column}) AND {letters}"


def separated_by(column: str, char: str) -> str:
    """Render a CHECK that ``column`` contains ``char`` neither first nor last.

    Written without LIKE (a ``%`` in DDL text is a placeholder to psycopg2) and without a
    comma after a nested call, which playhouse's SQLite table-rebuild parser cannot split.
    """
    return (
        f"replace({column}, '{char}', '') <> {column} "
        f"AND ltrim({column}, '{char}') = {column} "
        f"AND rtrim({column}, '{char}') = {column}"
    )


def non_negative(*columns: str) -> str:
    return " AND ".join(f"{c} >= 0" for c in columns)
