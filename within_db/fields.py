"""Custom fields: aware UTC datetimes, exact money in micros, normalised emails.

Normalisation lives in ``db_value`` so it holds on every write path, bulk inserts included.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

import peewee

from within_db.errors import ValidationError

__all__ = [
    "EmailField", "MAX_MICROS", "MICROS", "MoneyField", "UTC", "UTCDateTimeField", "format_utc",
    "normalise_email", "storage_field", "to_micros", "utcnow",
]

UTC = dt.UTC
MICROS = 1_000_000
MAX_MICROS = 2**63 - 1  # a BIGINT column


def storage_field(field: peewee.Field) -> peewee.Field:
    """Return the field whose column type holds ``field``'s values (a foreign key's target)."""
    return field.rel_field if isinstance(field, peewee.ForeignKeyField) else field


def utcnow() -> dt.datetime:
    """Return the current time as an aware UTC datetime."""
    return dt.datetime.now(UTC)


def format_utc(value: dt.datetime) -> str:
    """Render an aware datetime as fixed-width UTC text that sorts chronologically."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            "naive datetime refused: pass a timezone-aware datetime, e.g. "
            "datetime.now(timezone.utc)"
        )
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


class UTCDateTimeField(peewee.Field):
    """An instant: aware datetimes in, aware UTC datetimes out.

    PostgreSQL stores TIMESTAMPTZ; SQLite stores fixed-width UTC text (``TEXT`` through the
    field-type map in ``within_db.db``), which sorts and compares correctly as text.
    """

    field_type = "TIMESTAMPTZ"

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValidationError(
                    f"{self.name}: expected an ISO 8601 datetime with an offset"
                ) from None
        if not isinstance(value, dt.datetime):
            raise ValidationError(f"{self.name}: expected a datetime, got {type(value).__name__}")
        return format_utc(value)

    def python_value(self, value: Any) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return dt.datetime.fromisoformat(value)
        return value.astimezone(UTC)


def to_micros(value: Any, name: str = "amount") -> int:
    """Convert a Decimal, int or numeric string of currency units to integer micros."""
    if isinstance(value, (bool, float)):
        raise ValidationError(
            f"{name}: money must be a Decimal, int or numeric string, not {type(value).__name__}"
        )
    try:
        micros = Decimal(value) * MICROS
    except (InvalidOperation, TypeError, ValueError):
        raise ValidationError(f"{name}: not a number") from None
    if micros != micros.to_integral_value():
        raise ValidationError(f"{name}: more than 6 decimal places cannot be stored exactly")
    if not -MAX_MICROS <= micros <= MAX_MICROS:
        raise ValidationError(f"{name}: out of range (at most {MAX_MICROS // MICROS:,} units)")
    return int(micros)


class MoneyField(peewee.BigIntegerField):
    """Money as integer micro-units (1 unit = 1,000,000 micros); ``Decimal`` at the boundary.

    Name the column ``*_micros`` and keep a ``currency`` beside it. SQL sums stay exact integers.
    """

    def db_value(self, value: Any) -> int | None:
        if value is None:
            return None
        return to_micros(value, self.name)

    def python_value(self, value: Any) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value).scaleb(-6)


def normalise_email(value: str) -> str:
    """NFKC-normalise, trim and lower-case a whole email address."""
    return unicodedata.normalize("NFKC", value).strip().lower()


class EmailField(peewee.CharField):
    """An email address stored normalised, so a plain UNIQUE is case-insensitive."""

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return normalise_email(str(value))
