"""Value rules: one codec per field type, and the value helpers they share.

A codec checks a Python value and converts it for storage, for COPY text, from the driver, to
a pandas dtype and from CLI text. Every write path (save, ``insert``/``update`` queries,
``batch.bulk_insert`` on both backends) goes through it, so both backends hold the same data.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from within_db.canonical import canonical_document, canonical_json
from within_db.db import json_loads
from within_db.errors import ValidationError

__all__ = [
    "BoolCodec", "Codec", "DateCodec", "EmailCodec", "FloatCodec", "INLINE_ENV",
    "InstantCodec", "IntCodec", "JSONCodec", "MAX_MICROS", "MICROS", "MoneyCodec", "SafeText",
    "TEXT_MAX_LENGTH", "TextCodec", "UTC", "UUIDCodec", "copy_escape", "copy_text",
    "format_utc", "normalise_email", "to_micros", "utcnow",
]

UTC = dt.UTC
MICROS = 1_000_000
MAX_MICROS = 2**63 - 1  # a BIGINT column
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
#: TextField's maximum, in characters, enforced identically on both backends
TEXT_MAX_LENGTH = 1_048_576



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
    if value.tzinfo is not UTC:
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise ValidationError("datetime out of range in UTC") from None
    return value.isoformat(" ", "microseconds")


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
    if not micros.is_finite():
        raise ValidationError(f"{name}: not a finite number")
    if micros != micros.to_integral_value():
        raise ValidationError(f"{name}: more than 6 decimal places cannot be stored exactly")
    if not -MAX_MICROS <= micros <= MAX_MICROS:
        raise ValidationError(f"{name}: out of range (at most {MAX_MICROS // MICROS:,} units)")
    return int(micros)


def normalise_email(value: str) -> str:
    """NFKC-normalise, trim and lower-case a whole email address."""
    return unicodedata.normalize("NFKC", value).strip().lower()


# -- COPY text ------------------------------------------------------------------------------

def copy_escape(text: str) -> str:
    """Escape text for PostgreSQL's COPY text format (backslash, tab, newline, CR)."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_bool(value: bool) -> str:
    return "t" if value else "f"


#: COPY text by the Python type of a converted value: the type decides, never the field class
_COPY_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: copy_escape, bool: _copy_bool, int: int.__repr__, float: float.__repr__,
    uuid.UUID: str, dt.date: dt.date.isoformat, dt.datetime: dt.datetime.isoformat,
    Decimal: Decimal.__str__,
}


def copy_text(value: Any) -> str:
    """Render a storage value as one COPY text field (``\\N`` for NULL), by its Python type."""
    if value is None:
        return "\\N"
    render = _COPY_BY_TYPE.get(type(value))
    if render is None:
        raise TypeError(f"no COPY text for {type(value).__name__}")
    return render(value)


# -- codecs ---------------------------------------------------------------------------------


class SafeText(str):
    """Marks inline text made by a value's own formatter (``UUID.hex``, ``date.isoformat``):
    digits and ``-:. +`` only, so its COPY text needs no escaping."""


def _refuse(expected: str, value: Any) -> ValidationError:
    # Only the type is named: the value may be a secret.
    return ValidationError(f"expected {expected}, got {type(value).__name__}")


class Codec:
    """How one field type's values are checked and converted; subclasses fill the rules.

    - ``validate(value)`` returns the canonical Python value or raises ValidationError
      (naming the expected type, never the value).
    - ``to_db(value)`` validates and returns the storage value the drivers bind.
    - ``to_copy(stored)`` renders a storage value as COPY text (by its Python type).
    - ``reader(db)`` returns the cheapest exact driver-value -> Python conversion for ``db``,
      or None when the driver already returns the Python value.
    - ``dtype`` is the pandas dtype of the column; ``parse(text)`` reads CLI text.
    - ``arrow`` is the Arrow type of the column as pyarrow names it (``batch.to_arrow``,
      Parquet archives); ``arrow_reader(db)`` turns a driver value into what pyarrow builds
      that type from: a function per value, None for the driver value as it is, or ``str``
      for ISO text that Arrow parses itself (a vectorised cast).
    - ``inline(var)`` optionally returns ``(condition, expression, type)``: source over the
      name ``var`` whose expression, when the condition holds, is the storage value, of that
      Python type (``SafeText``: text without characters COPY escapes); batch compiles these
      into per-model row converters; any other value takes ``to_db``.
    """

    expected = "a value"
    #: a short name of the type, for messages ("boolean", "integer", "JSON"...)
    kind = "value"
    python_type: type | tuple[type, ...] = object
    dtype: str | None = None
    #: None: no exact Arrow type (``batch.to_arrow`` refuses the column)
    arrow: str | None = None
    #: whether ``parse`` reads CLI text (JSON cannot be compared with a typed value)
    parseable = True
    #: values are JSON-ready as they are (to_dict() keeps them)
    json_native = False

    def validate(self, value: Any) -> Any:
        return value

    def to_db(self, value: Any) -> Any:
        return self.validate(value)

    def to_copy(self, stored: Any) -> str:
        return copy_text(stored)

    def reader(self, db: Any) -> Callable[[Any], Any] | None:
        return None

    def arrow_reader(self, db: Any) -> Callable[[Any], Any] | type[str] | None:
        return self.reader(db)

    def parse(self, text: str) -> Any:
        return self.validate(text)

    def inline(self, var: str) -> tuple[str, str, type] | None:
        return None

    def describe(self) -> dict[str, Any]:
        """Return the rule as data (for schema generators)."""
        return {"type": self.expected}


class BoolCodec(Codec):
    """Only ``True`` and ``False``: ``"false"``, 0 and None-like strings are refused."""

    expected = "a bool"
    json_native = True
    kind = "boolean"
    python_type = bool
    dtype = "boolean"
    arrow = "bool"
    _TEXT = {"true": True, "t": True, "1": True, "yes": True,
             "false": False, "f": False, "0": False, "no": False}

    def validate(self, value: Any) -> bool:
        if value is True or value is False:
            return value
        raise _refuse(self.expected, value)

    def reader(self, db: Any) -> Callable[[Any], Any] | None:
        return None if db.native_booleans else bool

    def parse(self, text: str) -> bool:
        try:
            return self._TEXT[text.strip().lower()]
        except KeyError:
            raise ValidationError("expected true or false") from None

    def inline(self, var: str) -> tuple[str, str, type]:
        return f"({var} is True or {var} is False)", var, bool


class IntCodec(Codec):
    """Only ``int`` (not bool, float or str) within the column's range."""

    json_native = True
    kind = "integer"
    python_type = int
    dtype = "Int64"
    arrow = "int64"  # 32-bit columns too: ids and keys join across tables whatever their width

    def __init__(self, low: int, high: int, bits: int):
        self.low, self.high, self.bits = low, high, bits
        self.expected = f"an int ({bits}-bit)"

    def validate(self, value: Any) -> int:
        if type(value) is not int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _refuse(self.expected, value)
            value = int(value)  # an int subclass such as IntEnum
        if not self.low <= value <= self.high:
            raise ValidationError(f"expected {self.expected}: out of range "
                                  f"[{self.low}, {self.high}]")
        return value

    def parse(self, text: str) -> int:
        # ValidationError is a ValueError: convert first, so "out of range" is not lost
        try:
            value = int(text.strip())
        except ValueError:
            raise ValidationError(f"expected {self.expected}") from None
        return self.validate(value)

    def inline(self, var: str) -> tuple[str, str, type]:
        return f"(type({var}) is int and {self.low} <= {var} <= {self.high})", var, int

    def describe(self) -> dict[str, Any]:
        return {"type": "int", "minimum": self.low, "maximum": self.high}


class FloatCodec(Codec):
    """``int`` or ``float`` (not bool), finite unless ``allow_nonfinite``; stored as float."""

    expected = "a finite float"
    json_native = True
    kind = "float"
    python_type = float
    dtype = "float64"
    arrow = "double"

    def __init__(self, allow_nonfinite: bool = False):
        self.allow_nonfinite = allow_nonfinite
        if allow_nonfinite:
            self.expected = "a float"

    def validate(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _refuse(self.expected, value)
        try:
            value = float(value)
        except OverflowError:
            raise ValidationError(f"expected {self.expected}: out of range") from None
        if not self.allow_nonfinite and not math.isfinite(value):
            raise ValidationError(f"expected {self.expected}: NaN and infinities are refused")
        return value

    def parse(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValidationError(f"expected {self.expected}") from None
        return self.validate(value)

    def inline(self, var: str) -> tuple[str, str, type]:
        # x - x is 0.0 exactly for finite floats, NaN for NaN and infinities
        return f"(type({var}) is float and {var} - {var} == 0.0)", var, float

    def describe(self) -> dict[str, Any]:
        return {"type": "float", "finite": not self.allow_nonfinite}


class TextCodec(Codec):
    """``str`` only, without NUL or lone surrogates, at most ``max_length`` characters."""

    json_native = True
    kind = "text"
    python_type = str
    dtype = "string"
    arrow = "string"

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.expected = f"a str of at most {max_length:,} characters"

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _refuse(self.expected, value)
        value = str.__str__(value)  # a str subclass (an enum member) becomes its text
        if len(value) > self.max_length:
            raise ValidationError(f"expected {self.expected}, got {len(value):,}")
        if "\x00" in value:
            raise ValidationError("expected text without NUL characters")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError("expected text without lone surrogates") from None
        return value

    def parse(self, text: str) -> str:
        return self.validate(text)

    def inline(self, var: str) -> tuple[str, str, type] | None:
        return (f"(type({var}) is str and len({var}) <= {self.max_length} and {var}.isascii() "
                f"and '\\x00' not in {var})", var, str)

    def describe(self) -> dict[str, Any]:
        return {"type": "str", "max_length": self.max_length}


class EmailCodec(TextCodec):
    """Text stored normalised (NFKC, trimmed, lower-case), so a plain UNIQUE is case-blind."""

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _refuse(self.expected, value)
        return super().validate(normalise_email(value))

    def inline(self, var: str) -> None:
        return None


class UUIDCodec(Codec):
    """A ``uuid.UUID`` or its canonical 36-character text; stored as 32 hex digits."""

    expected = "a UUID or canonical UUID text"
    kind = "UUID"
    python_type = uuid.UUID
    dtype = "string"
    arrow = "string"  # canonical 36-character text: every engine joins and filters on it

    def validate(self, value: Any) -> uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        if isinstance(value, str) and len(value) == 36:
            try:
                parsed = uuid.UUID(value)
            except ValueError:
                pass
            else:
                if str(parsed) == value.lower():
                    return parsed
        raise _refuse(self.expected, value)

    def to_db(self, value: Any) -> str:
        return self.validate(value).hex

    def reader(self, db: Any) -> Callable[[Any], Any] | None:
        return None if db.native_uuids else uuid.UUID

    def arrow_reader(self, db: Any) -> Callable[[Any], Any]:
        # UUID.__str__, not str: a bare ``str`` means "ISO text for Arrow to cast"
        return uuid.UUID.__str__ if db.native_uuids else _hex_to_text

    def parse(self, text: str) -> uuid.UUID:
        return self.validate(text.strip())

    def inline(self, var: str) -> tuple[str, str, type]:
        return f"(type({var}) is _UUID)", f"{var}.hex", SafeText


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class DateCodec(Codec):
    """A ``datetime.date`` (not a datetime) or ``YYYY-MM-DD`` text; stored as ISO text."""

    expected = "a date or YYYY-MM-DD text"
    kind = "date"
    python_type = dt.date
    dtype = "datetime64[ns]"
    arrow = "date32[day]"

    def validate(self, value: Any) -> dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        # fromisoformat also reads 20260101 and week dates (2026-W01-1): only the canonical form
        if isinstance(value, str) and _ISO_DATE.fullmatch(value):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise _refuse(self.expected, value)

    def to_db(self, value: Any) -> str:
        return self.validate(value).isoformat()

    def reader(self, db: Any) -> Callable[[Any], Any] | None:
        return None if db.native_dates else dt.date.fromisoformat

    def arrow_reader(self, db: Any) -> type[str] | None:
        return None if db.native_dates else str

    def parse(self, text: str) -> dt.date:
        return self.validate(text.strip())

    def inline(self, var: str) -> tuple[str, str, type]:
        return f"(type({var}) is _date)", f"{var}.isoformat()", SafeText


class InstantCodec(Codec):
    """An aware datetime (or ISO 8601 text with an offset); stored as fixed-width UTC text.

    PostgreSQL stores TIMESTAMPTZ; SQLite the text itself, which sorts chronologically.
    """

    expected = "an aware datetime"
    kind = "instant"
    python_type = dt.datetime
    dtype = "datetime64[ns, UTC]"
    arrow = "timestamp[us, tz=UTC]"

    def validate(self, value: Any) -> dt.datetime:
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValidationError(f"expected {self.expected} or ISO 8601 text with an "
                                      "offset") from None
        if not isinstance(value, dt.datetime):
            raise _refuse(self.expected, value)
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError(
                "naive datetime refused: pass a timezone-aware datetime, e.g. "
                "datetime.now(timezone.utc)"
            )
        return value

    def to_db(self, value: Any) -> str:
        return format_utc(self.validate(value))

    def reader(self, db: Any) -> Callable[[Any], Any]:
        return _as_utc if db.native_datetimes else dt.datetime.fromisoformat

    def arrow_reader(self, db: Any) -> type[str] | None:
        # aware datetimes convert to UTC in pyarrow; SQLite's fixed-width UTC text is cast
        return None if db.native_datetimes else str

    def parse(self, text: str) -> dt.datetime:
        try:
            parsed = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValidationError(f"expected {self.expected} (ISO 8601)") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def inline(self, var: str) -> tuple[str, str, type]:
        return f"(type({var}) is _datetime and {var}.tzinfo is _UTC)", \
            f"{var}.isoformat(' ', 'microseconds')", SafeText


def _hex_to_text(value: str) -> str:
    # SQLite holds the 32 lower-case hex digits UUIDCodec.to_db writes; anything else parses
    if len(value) == 32 and value == value.lower():
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    return str(uuid.UUID(value))


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


class MoneyCodec(Codec):
    """A Decimal, int or numeric text of currency units; stored as integer micros."""

    expected = "a Decimal, int or numeric text (at most 6 decimal places)"
    kind = "amount"
    python_type = Decimal
    dtype = "float64"  # units as floats for modelling; query directly for exact Decimal
    arrow = "int64"  # the stored micros, exact, under the column's *_micros name

    def validate(self, value: Any) -> Decimal:
        return Decimal(self.to_db(value)).scaleb(-6)

    def to_db(self, value: Any) -> int:
        if isinstance(value, bool):
            raise _refuse(self.expected, value)
        try:
            return to_micros(value, "money")
        except ValidationError as exc:
            raise ValidationError(str(exc).removeprefix("money: ")) from None

    def reader(self, db: Any) -> Callable[[Any], Any]:
        return _from_micros

    def arrow_reader(self, db: Any) -> None:
        return None

    def parse(self, text: str) -> Decimal:
        return self.validate(text.strip())


def _from_micros(value: int) -> Decimal:
    return Decimal(value).scaleb(-6)


def _not_serialisable(value: Any) -> Any:
    raise TypeError(type(value).__name__)


_json_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
# The C encoder made once (json.dumps makes one per call); no circular-reference markers: a
# cycle ends in RecursionError, which is refused like any other unserialisable value.
_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encoder = _make_encoder and _make_encoder(
    None, _not_serialisable, json.encoder.encode_basestring_ascii, None, ":", ",", False,
    False, False)


# The escape of a NUL, not the text "\\u0000" (whose backslash is escaped itself): an even
# run of backslashes before it.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _json_text(value: Any) -> str:
    if _c_encoder is None:
        return _json_encoder.encode(value)
    if type(value) is str:
        return json.encoder.encode_basestring_ascii(value)
    return "".join(_c_encoder(value, 0))


class JSONCodec(Codec):
    """A JSON-serialisable value with finite numbers and text PostgreSQL's jsonb accepts."""

    expected = "a JSON-serialisable value"
    json_native = True
    kind = "JSON"
    parseable = False
    arrow = "string"  # RFC 8785 text: equal on both backends, whatever shape each row has
    python_type = (dict, list, str, int, float, bool)

    def validate(self, value: Any) -> Any:
        self.to_db(value)
        return value

    def to_db(self, value: Any) -> str:
        try:
            text = _json_text(value)
        except ValueError:
            raise ValidationError(f"expected {self.expected}: NaN and infinities are "
                                  "refused") from None
        except (TypeError, RecursionError):
            raise _refuse(self.expected, value) from None
        if "\\u0000" in text and _NUL_ESCAPE.search(text):
            raise ValidationError(f"expected {self.expected} without NUL characters")
        if "\\ud" in text:
            _check_surrogates(value)
        return text

    def to_copy(self, stored: Any) -> str:
        # ASCII-only JSON text escapes every control character itself: only backslashes remain
        return stored.replace("\\", "\\\\") if "\\" in stored else stored

    def reader(self, db: Any) -> Callable[[Any], Any] | None:
        return None if db.native_json else json_loads

    def arrow_reader(self, db: Any) -> Callable[[Any], str]:
        return canonical_json if db.native_json else canonical_document

    def parse(self, text: str) -> Any:
        raise ValidationError("JSON cannot be compared with a typed value")

    def describe(self) -> dict[str, Any]:
        return {"type": "json", "finite": True}


def _check_surrogates(value: Any) -> None:
    """Refuse lone surrogates anywhere in a JSON value (jsonb cannot hold them)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError("expected JSON text without lone surrogates") from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


#: names the source of ``Codec.inline`` may use
INLINE_ENV = {"_UUID": uuid.UUID, "_date": dt.date, "_datetime": dt.datetime, "_UTC": UTC}
