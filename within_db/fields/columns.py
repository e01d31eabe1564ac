"""The peewee fields the models use: each converts through its codec (codecs.py).

Refusals name ``Model.field``; SQLite booleans get a named CHECK; foreign keys take their
target's codec and accept a model instance for its key.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import peewee

from within_db.db import json_loads
from within_db.errors import ValidationError
from within_db.fields.codecs import (
    INT32,
    INT64,
    TEXT_MAX_LENGTH,
    UTC,
    BoolCodec,
    Codec,
    DateCodec,
    EmailCodec,
    FloatCodec,
    InstantCodec,
    IntCodec,
    JSONCodec,
    MoneyCodec,
    TextCodec,
    UUIDCodec,
)

__all__ = [
    "AutoField", "BigAutoField", "BigIntegerField", "BooleanField", "CharField", "CodecField",
    "DateField", "DoubleField", "EmailField", "ForeignKeyField", "IntegerField", "JSONField",
    "MoneyField", "TextField", "UTCDateTimeField", "UUIDField", "codec_of", "storage_field",
]


def storage_field(field: peewee.Field) -> peewee.Field:
    """Return the field whose column type holds ``field``'s values (a foreign key's target)."""
    return field.rel_field if isinstance(field, peewee.ForeignKeyField) else field


class CodecField(peewee.Field):
    """Mixin: ``db_value`` goes through the field's codec, refusals name model.field."""

    codec: Codec = Codec()

    @property
    def label(self) -> str:
        model = getattr(self, "model", None)
        return f"{model.__name__}.{self.name}" if model is not None else str(self.name)

    def db_value(self, value: Any) -> Any:
        if value is None or isinstance(value, peewee.Node):
            return value  # NULL (NOT NULL is the database's rule) and SQL expressions
        try:
            return self.codec.to_db(value)
        except ValidationError as exc:
            raise ValidationError(f"{self.label}: {exc}") from None


class BooleanField(CodecField, peewee.BooleanField):
    """A bool. Where the column type is INTEGER (SQLite), a named CHECK keeps it 0 or 1."""

    codec = BoolCodec()

    def ddl(self, ctx: Any) -> Any:
        node = super().ddl(ctx)
        datatype = self.ddl_datatype(ctx)
        if datatype is not None and datatype.sql in ("INTEGER", "INT"):
            name = f"{self.model._meta.table_name}_{self.column_name}_boolean_check"
            node = peewee.NodeList((node, peewee.SQL(
                f'CONSTRAINT "{name}" CHECK ("{self.column_name}" IN (0, 1))')))
        return node


class IntegerField(CodecField, peewee.IntegerField):
    """A 32-bit integer (INTEGER on PostgreSQL)."""

    codec = IntCodec(*INT32, bits=32)


class BigIntegerField(CodecField, peewee.BigIntegerField):
    """A 64-bit integer (BIGINT)."""

    codec = IntCodec(*INT64, bits=64)


class AutoField(CodecField, peewee.AutoField):
    codec = IntCodec(*INT32, bits=32)


class BigAutoField(CodecField, peewee.BigAutoField):
    codec = IntCodec(*INT64, bits=64)


class DoubleField(CodecField, peewee.DoubleField):
    """A finite double; ``allow_nonfinite=True`` admits NaN and infinities."""

    def __init__(self, *args: Any, allow_nonfinite: bool = False, **kwargs: Any):
        self.codec = FloatCodec(allow_nonfinite)
        super().__init__(*args, **kwargs)


class CharField(CodecField, peewee.CharField):
    """Text of at most ``max_length`` characters (VARCHAR(n) on PostgreSQL, TEXT on SQLite)."""

    def __init__(self, max_length: int = 255, *args: Any, **kwargs: Any):
        self.codec = TextCodec(max_length)
        super().__init__(max_length, *args, **kwargs)


class TextField(CodecField, peewee.TextField):
    """Text of at most ``TEXT_MAX_LENGTH`` (1 MiB) characters on both backends."""

    codec = TextCodec(TEXT_MAX_LENGTH)


class EmailField(CharField):
    """An email address stored normalised, so a plain UNIQUE is case-insensitive."""

    def __init__(self, max_length: int = 254, *args: Any, **kwargs: Any):
        super().__init__(max_length, *args, **kwargs)
        self.codec = EmailCodec(max_length)


class UUIDField(CodecField, peewee.UUIDField):
    codec = UUIDCodec()


class DateField(CodecField, peewee.DateField):
    codec = DateCodec()


class UTCDateTimeField(CodecField):
    """An instant: aware datetimes in, aware UTC datetimes out (TIMESTAMPTZ; TEXT on SQLite)."""

    field_type = "TIMESTAMPTZ"
    codec = InstantCodec()

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return dt.datetime.fromisoformat(value)
        return value.astimezone(UTC)


class MoneyField(CodecField, peewee.BigIntegerField):
    """Money as integer micro-units (1 unit = 1,000,000 micros); ``Decimal`` at the boundary.

    Name the column ``*_micros`` and keep a ``currency`` beside it. SQL sums stay exact integers.
    """

    codec = MoneyCodec()

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        return Decimal(value).scaleb(-6)


class JSONField(CodecField, peewee.JSONField):
    """JSON (JSONB on PostgreSQL, TEXT on SQLite): serialisable, finite numbers, no NUL."""

    codec = JSONCodec()

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("loads", json_loads)
        super().__init__(*args, **kwargs)

    def db_value(self, value: Any) -> Any:
        if value is None or isinstance(value, peewee.Node):
            return value
        try:
            self.codec.validate(value)
        except ValidationError as exc:
            raise ValidationError(f"{self.label}: {exc}") from None
        return peewee.JSONField.db_value(self, value)


class ForeignKeyField(CodecField, peewee.ForeignKeyField):
    """A foreign key: its target's codec; a model instance of the target stands for its key."""

    @property
    def codec(self) -> Codec:  # type: ignore[override]
        return codec_of(self.rel_field)

    def db_value(self, value: Any) -> Any:
        if isinstance(value, self.rel_model):
            value = getattr(value, self.rel_field.name)
        if not isinstance(self.rel_field, CodecField):
            return self.rel_field.db_value(value)
        return super().db_value(value)


_FALLBACK = Codec()


def codec_of(field: peewee.Field) -> Codec:
    """Return the codec of ``field`` (a foreign key: its target's); plain fields get none."""
    return getattr(field, "codec", _FALLBACK)
