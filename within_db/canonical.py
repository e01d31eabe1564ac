"""Canonical JSON for hashing: RFC 8785 (JCS), extended to integers of any size.

``canonical_json`` renders a value the same way whatever either database hands back for it
(jsonb turns ``1e16`` into ``10000000000000000``); ``normalise_json`` checks a value and
returns the form that reads back unchanged from SQLite and PostgreSQL alike. The format is
part of every audit hash: changing it needs a migration that re-hashes the chain.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

import rfc8785

from within_db.errors import ValidationError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "canonical_document", "canonical_json",
           "canonical_with_document", "check_text", "normalise_json"]

MAX_DEPTH = 64
#: Python refuses to parse longer integers by default; jsonb would keep them.
MAX_INT_DIGITS = 1000
_PLAIN_LIMIT = 10**21  # ECMAScript (and so RFC 8785) writes larger magnitudes with an exponent
# What PostgreSQL text cannot hold (NUL) and what UTF-8 cannot encode (lone surrogates).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _integer(value: int) -> str:
    # Exact digits; past 1e21 the ECMAScript form of the same number, so that an integral
    # float (rendered by rfc8785) and the integer jsonb returns for it read the same.
    if -_PLAIN_LIMIT < value < _PLAIN_LIMIT:
        return str(value)
    digits = str(abs(value))
    significant = digits.rstrip("0")
    mantissa = significant[0] + ("." + significant[1:] if len(significant) > 1 else "")
    return f"{'-' if value < 0 else ''}{mantissa}e+{len(digits) - 1}"


def _float(value: float) -> str:
    # ECMAScript's form of the shortest round-trip digits, which repr() also finds; between
    # 1e-4 and 1e16 the two differ only in repr's trailing ".0".
    text = repr(value)
    if "e" not in text and "n" not in text:
        if value == 0:
            return "0"
        return text[:-2] if text.endswith(".0") else text
    try:
        return rfc8785.dumps(value).decode()
    except rfc8785.FloatDomainError:
        raise ValidationError(f"{value!r} is not a JSON number") from None


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _encode(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is dict:
        return "{" + ",".join(encode_basestring(k) + ":" + _encode(value[k])
                              for k in sorted(value, key=_utf16)) + "}"
    if kind is list or kind is tuple:
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return _integer(value)
    if kind is float:
        return _float(value)
    if kind is Decimal:  # a number token parsed by _DECODER: exact if integral
        if value.adjusted() < MAX_INT_DIGITS and value == value.to_integral_value():
            return _integer(int(value))
        return _float(float(value))
    raise ValidationError(f"cannot encode {kind.__name__} as JSON")


def canonical_json(value: Any) -> str:
    """Return the RFC 8785 text of a JSON value (integers of any size kept exact).

    Strings, keys (sorted by UTF-16 code units) and nesting follow RFC 8785, floats are
    rendered by the ``rfc8785`` package; integers past 2**53, outside RFC 8785's domain, keep
    every digit in the same notation ECMAScript uses for numbers of that size.

    Numbers are rendered by value, not by type: ``1``, ``1.0`` and jsonb's reading of either
    give the same text. Dictionary keys must be strings.
    """
    if type(value) is dict and not value:
        return "{}"
    try:
        return _encode(value)
    except (TypeError, AttributeError):  # a key that is not a string
        raise ValidationError("JSON object keys must be strings") from None


# Floats and integers from 1e21 up parse to Decimal, which the C encoder refuses: a document
# without them, and without keys that sort differently in UTF-16, takes the fast path, whose
# text is then exactly RFC 8785's.
def _int_token(token: str) -> int | Decimal:
    return int(token) if len(token) < 22 else Decimal(token)  # 1e21 and up: Decimal


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=_int_token)
_scan = _DECODER.scan_once  # type: ignore[attr-defined]  # the C scanner json.loads uses


def _refuse(value: Any) -> Any:
    raise TypeError


# The C encoder itself (json.dumps builds one per call): sorted keys, compact, no NaN.
_encode_fast = (c_make_encoder(None, _refuse, encode_basestring, None, ":", ",", True, False,
                               False) if c_make_encoder is not None else None)


def canonical_with_document(items: list, document: str) -> str:
    """Return ``canonical_json(items + [json.loads(document)])``, fast.

    For hashing rows read straight from a database: ``items`` are strings or None and
    ``document`` a stored JSON text. ValidationError if it is not JSON.
    """
    try:
        value, end = _scan(document, 0)
        if end != len(document):
            value = _DECODER.decode(document)
    except (StopIteration, ValueError):
        raise ValidationError("stored JSON document cannot be parsed") from None
    items = [*items, value]
    if _encode_fast is not None:
        try:
            text = "".join(_encode_fast(items, 0))
        except TypeError:  # a float, which needs the ECMAScript form
            return canonical_json(items)
        if text.isascii() or max(text) < "\ue000":
            return text
    return canonical_json(items)


def canonical_document(document: str) -> str:
    """Return ``canonical_json(json.loads(document))``, fast: a stored JSON text re-rendered.

    ValidationError if it is not JSON.
    """
    return canonical_with_document([], document)[1:-1]  # the text of [value], unwrapped


def check_text(value: str, name: str) -> str:
    """Return ``value`` if both databases can store it unchanged, else raise ValidationError."""
    if _UNSTORABLE.search(value):
        raise ValidationError(f"{name}: contains NUL or an unpaired surrogate, which "
                              "PostgreSQL cannot store")
    return value


def _number(value: float, where: str) -> int | float:
    if not math.isfinite(value):
        raise ValidationError(f"{where}: {value!r} is not a JSON number")
    if value.is_integer():
        # The integer of the float's shortest decimal form: what jsonb reads back for it.
        return int(Decimal(repr(value)))
    return value


def _normalise(value: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValidationError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return check_text(str(value), where)
    if isinstance(value, int):
        if len(str(abs(int(value)))) > MAX_INT_DIGITS:
            raise ValidationError(f"{where}: integer longer than {MAX_INT_DIGITS} digits")
        return int(value)
    if isinstance(value, float):
        return _number(float(value), where)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{where}: keys must be strings, got "
                                      f"{type(key).__name__}")
            out[check_text(str(key), where)] = _normalise(item, where, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(item, where, depth + 1) for item in value]
    raise ValidationError(f"{where}: {type(value).__name__} is not a JSON value "
                          "(use str, int, float, bool, None, list or dict)")


def normalise_json(value: Any, name: str = "value") -> Any:
    """Check a JSON value and return the form both databases read back unchanged.

    Integral floats become integers (``1.0`` -> ``1``, ``1e16`` -> ``10000000000000000``,
    ``-0.0`` -> ``0``), as jsonb would store them; tuples become lists. Refused with
    ValidationError: non-finite floats, non-string keys, NUL or unpaired surrogates,
    integers over MAX_INT_DIGITS digits, nesting over MAX_DEPTH, any other type.
    ``canonical_json`` gives the same text for the value and its normal form.
    """
    return _normalise(value, name, 0)
