"""The codecs pinned without a database: each limit from both sides, every branch of validate,
to_db, to_copy, reader, parse, inline and describe, and the exact refusal messages.

What reaches the databases is in test_spec_fields.py."""

import datetime as dt
import enum
import math
import uuid
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from within_db.errors import ValidationError
from within_db.fields import (
    INLINE_ENV,
    MAX_MICROS,
    TEXT_MAX_LENGTH,
    BoolCodec,
    Codec,
    DateCodec,
    EmailCodec,
    FloatCodec,
    InstantCodec,
    IntCodec,
    JSONCodec,
    MoneyCodec,
    SafeText,
    TextCodec,
    UUIDCodec,
    copy_escape,
    copy_text,
    format_utc,
    normalise_email,
    to_micros,
    utcnow,
)
from within_db.fields import codecs as codec_module

UTC = dt.UTC
INT32 = IntCodec(-(2**31), 2**31 - 1, bits=32)
INT64 = IntCodec(-(2**63), 2**63 - 1, bits=64)
NATIVE = SimpleNamespace(native_booleans=True, native_uuids=True, native_dates=True,
                         native_datetimes=True, native_json=True)
TEXTUAL = SimpleNamespace(native_booleans=False, native_uuids=False, native_dates=False,
                          native_datetimes=False, native_json=False)


def refused(codec_call, *args, match=None):
    with pytest.raises(ValidationError, match=match) as info:
        codec_call(*args)
    return str(info.value)


def inline_holds(codec, value):
    """Whether a codec's inline fast path takes ``value`` (else to_db decides)."""
    condition, expression, kind = codec.inline("v")
    env = {**INLINE_ENV, "v": value}
    if not eval(condition, env):  # noqa: S307 - the codec's own source, as batch compiles it
        return False
    result = eval(expression, env)  # noqa: S307
    assert result == codec.to_db(value) and isinstance(result, kind if kind is not SafeText
                                                        else str)
    return True


# -- integers -------------------------------------------------------------------------------


@pytest.mark.parametrize("codec,low,high", [(INT32, -(2**31), 2**31 - 1),
                                            (INT64, -(2**63), 2**63 - 1)])
def test_integers_take_both_ends_of_their_range_and_nothing_beyond(codec, low, high):
    for value in (low, low + 1, 0, high - 1, high):
        assert codec.validate(value) == value
        assert codec.to_db(value) == value
        assert inline_holds(codec, value)
    bits = codec.bits
    for value in (low - 1, high + 1):
        message = refused(codec.validate, value)
        assert message == f"expected an int ({bits}-bit): out of range [{low}, {high}]"
        assert not inline_holds(codec, value)
    assert codec.describe() == {"type": "int", "minimum": low, "maximum": high}
    assert codec.parse(f" {high} ") == high
    refused(codec.parse, str(high + 1), match="out of range")


class Level(enum.IntEnum):
    HIGH = 3


def test_integers_refuse_bool_float_and_text_but_take_int_subclasses():
    for bad, kind in ((True, "bool"), (False, "bool"), (1.0, "float"), ("1", "str"),
                      (Decimal(1), "Decimal"), (None, "NoneType")):
        assert refused(INT32.validate, bad) == f"expected an int (32-bit), got {kind}"
        assert not inline_holds(INT32, bad) if bad is not None else True
    value = INT32.validate(Level.HIGH)
    assert value == 3 and type(value) is int
    assert not inline_holds(INT32, Level.HIGH)  # the subclass goes through to_db
    for text in ("1.5", "", "one", "0x10"):
        assert refused(INT32.parse, text) == "expected an int (32-bit)"


# -- floats ---------------------------------------------------------------------------------


def test_floats_take_ints_and_finite_floats_as_float():
    codec = FloatCodec()
    for value in (0, -3, 1.5, -1e308, 5e-324):
        got = codec.validate(value)
        assert got == value and type(got) is float
    assert codec.expected == "a finite float" and codec.describe() == {"type": "float",
                                                                       "finite": True}
    assert codec.parse(" 2.5 ") == 2.5
    assert refused(codec.parse, "many") == "expected a finite float"
    assert inline_holds(codec, 1.5) and not inline_holds(codec, 1)  # ints take to_db


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_floats_refuse_nan_and_infinities_unless_allowed(bad):
    assert refused(FloatCodec().validate, bad) == (
        "expected a finite float: NaN and infinities are refused")
    refused(FloatCodec().parse, str(bad), match="NaN and infinities")
    assert not inline_holds(FloatCodec(), bad)
    lenient = FloatCodec(allow_nonfinite=True)
    got = lenient.validate(bad)
    assert got == bad or math.isnan(got)
    assert lenient.expected == "a float" and lenient.describe()["finite"] is False


def test_floats_refuse_bool_text_decimal_and_ints_beyond_a_double():
    codec = FloatCodec()
    for bad, kind in ((True, "bool"), ("1.0", "str"), (Decimal("1"), "Decimal")):
        assert refused(codec.validate, bad) == f"expected a finite float, got {kind}"
    assert refused(codec.validate, 10**400) == "expected a finite float: out of range"


# -- text -----------------------------------------------------------------------------------


class Colour(enum.StrEnum):
    RED = "red"


def test_text_takes_exactly_max_length_characters_and_refuses_one_more():
    codec = TextCodec(5)
    assert codec.validate("abcde") == "abcde" and inline_holds(codec, "abcde")
    assert codec.validate("ééééé") == "ééééé"  # characters, not bytes
    assert refused(codec.validate, "abcdef") == (
        "expected a str of at most 5 characters, got 6")
    assert not inline_holds(codec, "abcdef")
    assert codec.describe() == {"type": "str", "max_length": 5}
    assert TextCodec(TEXT_MAX_LENGTH).expected == "a str of at most 1,048,576 characters"
    assert refused(TextCodec(TEXT_MAX_LENGTH).validate, "x" * (TEXT_MAX_LENGTH + 1)) == (
        "expected a str of at most 1,048,576 characters, got 1,048,577")


def test_text_refuses_nul_lone_surrogates_and_non_text():
    codec = TextCodec(10)
    assert refused(codec.validate, "a\x00b") == "expected text without NUL characters"
    assert not inline_holds(codec, "a\x00b")
    assert refused(codec.validate, "é\ud800") == "expected text without lone surrogates"
    assert refused(codec.validate, "\udfff") == "expected text without lone surrogates"
    assert codec.validate("😀") == "😀"  # a pair, not a lone surrogate
    assert refused(codec.validate, b"bytes") == (
        "expected a str of at most 10 characters, got bytes")
    assert not inline_holds(codec, "é")  # non-ASCII takes to_db (the surrogate check)
    value = codec.validate(Colour.RED)
    assert value == "red" and type(value) is str
    assert codec.parse("  padded ") == "  padded "  # text is taken as it is


def test_emails_are_normalised_before_the_length_limit():
    codec = EmailCodec(12)
    assert codec.validate(" AB@CD.EF ") == "ab@cd.ef"
    assert normalise_email("  Ｍe@Example.COM ") == "me@example.com"
    assert refused(codec.validate, 5) == "expected a str of at most 12 characters, got int"
    assert refused(codec.validate, "x" * 13) == "expected a str of at most 12 characters, got 13"
    assert codec.validate(" " + "x" * 12 + " ") == "x" * 12  # trimmed first
    assert codec.inline("v") is None


# -- booleans -------------------------------------------------------------------------------


def test_booleans_take_only_true_and_false():
    codec = BoolCodec()
    assert codec.validate(True) is True and codec.validate(False) is False
    for bad, kind in ((1, "int"), (0, "int"), ("true", "str"), (None, "NoneType")):
        assert refused(codec.validate, bad) == f"expected a bool, got {kind}"
    assert inline_holds(codec, True) and inline_holds(codec, False)
    assert not inline_holds(codec, 1)


@pytest.mark.parametrize("text,value", [
    ("true", True), (" T ", True), ("1", True), ("YES", True),
    ("false", False), ("f", False), ("0", False), ("No ", False)])
def test_boolean_cli_text(text, value):
    assert BoolCodec().parse(text) is value


@pytest.mark.parametrize("text", ["", "y", "n", "on", "2", "truth"])
def test_boolean_cli_text_refused(text):
    assert refused(BoolCodec().parse, text) == "expected true or false"


def test_readers_convert_only_what_the_driver_does_not():
    assert BoolCodec().reader(NATIVE) is None and BoolCodec().reader(TEXTUAL) is bool
    assert UUIDCodec().reader(NATIVE) is None and UUIDCodec().reader(TEXTUAL) is uuid.UUID
    assert DateCodec().reader(NATIVE) is None
    assert DateCodec().reader(TEXTUAL)("2026-02-03") == dt.date(2026, 2, 3)
    assert JSONCodec().reader(NATIVE) is None
    assert JSONCodec().reader(TEXTUAL)('{"a":[1]}') == {"a": [1]}
    plus2 = dt.timezone(dt.timedelta(hours=2))
    native = InstantCodec().reader(NATIVE)(dt.datetime(2026, 1, 1, 2, 0, tzinfo=plus2))
    assert native == dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC) and native.tzinfo is UTC
    utc = dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert InstantCodec().reader(NATIVE)(utc) is utc
    text = InstantCodec().reader(TEXTUAL)("2026-01-01 00:00:00.000000+00:00")
    assert text == utc and text.utcoffset() == dt.timedelta(0)
    assert MoneyCodec().reader(NATIVE)(1_500_000) == Decimal("1.5")
    assert MoneyCodec().reader(TEXTUAL)(-1) == Decimal("-0.000001")
    assert Codec().reader(NATIVE) is None and IntCodec(0, 1, 8).reader(TEXTUAL) is None


# -- UUIDs ----------------------------------------------------------------------------------


def test_uuids_take_objects_and_canonical_text_in_either_case():
    value = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    codec = UUIDCodec()
    assert codec.validate(value) is value
    assert codec.validate(str(value)) == value
    assert codec.validate(str(value).upper()) == value
    assert codec.to_db(str(value)) == value.hex
    assert codec.parse(f" {value} ") == value
    assert inline_holds(codec, value) and not inline_holds(codec, str(value))


@pytest.mark.parametrize("bad", [
    "a0eebc999c0b4ef8bb6d6bb9bd380a11",          # 32 hex digits
    "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",    # braces
    "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "a0eebc999c0b-4ef8-bb6d-6bb9bd380a11-",      # 36 characters, hyphens moved
    "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",      # 36 characters, not hex
    12345, None])
def test_uuids_refuse_other_spellings(bad):
    assert refused(UUIDCodec().validate, bad) == (
        f"expected a UUID or canonical UUID text, got {type(bad).__name__}")


# -- dates ----------------------------------------------------------------------------------


def test_dates_take_date_objects_and_canonical_text():
    codec = DateCodec()
    day = dt.date(2026, 2, 28)
    assert codec.validate(day) is day
    assert codec.validate("2026-02-28") == day
    assert codec.to_db(day) == "2026-02-28" and codec.to_db("2026-02-28") == "2026-02-28"
    assert codec.parse(" 2026-02-28\n") == day
    assert inline_holds(codec, day) and not inline_holds(codec, dt.datetime(2026, 1, 1))


@pytest.mark.parametrize("bad", [
    "2026-W09-6", "20260228", "2026-059", "2026-2-28", "2026-02-30", "2026-13-01",
    "２０２６-02-28", " 2026-02-28", "2026-02-28T00:00", "", dt.datetime(2026, 2, 28), 20260228])
def test_dates_refuse_every_other_spelling(bad):
    assert refused(DateCodec().validate, bad) == (
        f"expected a date or YYYY-MM-DD text, got {type(bad).__name__}")


# -- instants -------------------------------------------------------------------------------


class NoOffset(dt.tzinfo):
    def utcoffset(self, when):
        return None


def test_instants_take_aware_datetimes_and_offset_text():
    codec = InstantCodec()
    plus2 = dt.timezone(dt.timedelta(hours=2))
    when = dt.datetime(2026, 1, 1, 1, 0, tzinfo=plus2)
    assert codec.validate(when) is when
    assert codec.validate("2026-01-01T01:00:00+02:00") == when
    assert codec.to_db(when) == "2025-12-31 23:00:00.000000+00:00"
    utc = dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert inline_holds(codec, utc) and not inline_holds(codec, when)
    assert codec.parse(" 2026-01-01T01:00:00+02:00 ") == when
    assert codec.parse("2026-01-01 00:00") == utc  # CLI text without offset is UTC
    assert codec.parse("2026-01-01 00:00").tzinfo is UTC


def test_instants_refuse_naive_offsetless_and_other_values():
    codec = InstantCodec()
    naive = "naive datetime refused: pass a timezone-aware datetime, e.g. " \
            "datetime.now(timezone.utc)"
    assert refused(codec.validate, dt.datetime(2026, 1, 1)) == naive
    assert refused(codec.validate, "2026-01-01T00:00:00") == naive
    assert refused(codec.validate, dt.datetime(2026, 1, 1, tzinfo=NoOffset())) == naive
    assert refused(codec.validate, "yesterday") == (
        "expected an aware datetime or ISO 8601 text with an offset")
    assert refused(codec.validate, dt.date(2026, 1, 1)) == "expected an aware datetime, got date"
    assert refused(codec.validate, 0) == "expected an aware datetime, got int"
    assert refused(codec.parse, "soon") == "expected an aware datetime (ISO 8601)"


def test_format_utc_converts_to_fixed_width_utc_and_refuses_what_it_cannot():
    utc = dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert format_utc(utc) == "2026-01-01 00:00:00.000000+00:00"
    minus5 = dt.timezone(dt.timedelta(hours=-5))
    assert format_utc(dt.datetime(2026, 1, 1, 19, 0, 0, 7, tzinfo=minus5)) == (
        "2026-01-02 00:00:00.000007+00:00")
    assert format_utc(dt.datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC"))) == (
        "2026-01-01 00:00:00.000000+00:00")
    naive = ("naive datetime refused: pass a timezone-aware datetime, e.g. "
             "datetime.now(timezone.utc)")
    assert refused(format_utc, dt.datetime(2026, 1, 1)) == naive
    assert refused(format_utc, dt.datetime(2026, 1, 1, tzinfo=NoOffset())) == naive
    late = dt.datetime.max.replace(tzinfo=minus5)
    assert refused(format_utc, late) == "datetime out of range in UTC"
    now = utcnow()
    assert now.tzinfo is UTC and abs(dt.datetime.now(UTC) - now) < dt.timedelta(seconds=5)


# -- money ----------------------------------------------------------------------------------

TOP = Decimal(MAX_MICROS).scaleb(-6)  # 9223372036854.775807 units


def test_money_takes_both_ends_of_the_bigint_range_and_nothing_beyond():
    assert TOP == Decimal("9223372036854.775807")
    for value, micros in ((TOP, MAX_MICROS), (-TOP, -MAX_MICROS),
                          (str(TOP), MAX_MICROS), (0, 0), ("-0.000001", -1)):
        assert to_micros(value) == micros
        assert MoneyCodec().to_db(value) == micros
    step = Decimal("0.000001")
    for value in (TOP + step, -TOP - step, 2**63):
        assert refused(to_micros, value) == (
            "amount: out of range (at most 9,223,372,036,854 units)")
        assert refused(MoneyCodec().to_db, value) == (
            "out of range (at most 9,223,372,036,854 units)")


def test_money_refusals_name_the_argument():
    assert refused(to_micros, "abc", "budget") == "budget: not a number"
    assert refused(to_micros, None) == "amount: not a number"
    assert refused(to_micros, [1]) == "amount: not a number"
    assert refused(to_micros, "NaN") == "amount: not a finite number"
    assert refused(to_micros, "-Infinity") == "amount: not a finite number"
    assert refused(to_micros, "0.0000001") == (
        "amount: more than 6 decimal places cannot be stored exactly")
    assert refused(to_micros, 1.5) == (
        "amount: money must be a Decimal, int or numeric string, not float")
    assert refused(to_micros, True, "fee") == (
        "fee: money must be a Decimal, int or numeric string, not bool")


def test_money_codec_takes_exact_units_and_gives_decimals():
    codec = MoneyCodec()
    assert to_micros("1.0000000") == 1_000_000  # trailing zeros are exact
    assert to_micros(" 2.5 ") == 2_500_000 and to_micros(3) == 3_000_000
    assert codec.validate("1.5") == Decimal("1.5") and isinstance(codec.validate(1), Decimal)
    assert codec.parse(" 0.25 ") == Decimal("0.25")
    assert refused(codec.to_db, False) == (
        "expected a Decimal, int or numeric text (at most 6 decimal places), got bool")
    assert refused(codec.to_db, "x") == "not a number"
    assert refused(codec.to_db, 0.5) == (
        "money must be a Decimal, int or numeric string, not float")


# -- JSON -----------------------------------------------------------------------------------


def test_json_text_is_compact_ascii_and_keeps_literal_backslash_u_text():
    codec = JSONCodec()
    assert codec.to_db({"a": [1, 2.5, True, None, "é"]}) == '{"a":[1,2.5,true,null,"\\u00e9"]}'
    assert codec.to_db("plain") == '"plain"'
    for text in ("\\u0000", "\\\\u0000", "x\\u0000y", "\\ud800"):
        stored = codec.to_db({"k": text})
        assert JSONCodec().reader(TEXTUAL)(stored) == {"k": text}
        assert codec.validate([text]) == [text]


@pytest.mark.parametrize("bad", ["\x00", "a\x00", "\\\x00", {"k\x00": 1}, ["ok", {"x": "\x00"}]])
def test_json_refuses_nul_anywhere(bad):
    assert refused(JSONCodec().to_db, bad) == (
        "expected a JSON-serialisable value without NUL characters")


@pytest.mark.parametrize("bad", ["\ud800", {"k": "\udfff"}, {"\ud800": 1}, ["ok", ["\ud83d"]],
                                 ("t", "\ud800")])
def test_json_refuses_lone_surrogates_anywhere(bad):
    assert refused(JSONCodec().to_db, bad) == "expected JSON text without lone surrogates"


def test_json_refuses_non_finite_numbers_unserialisable_values_and_cycles():
    codec = JSONCodec()
    for bad in (math.nan, {"x": math.inf}, [-math.inf]):
        assert refused(codec.to_db, bad) == (
            "expected a JSON-serialisable value: NaN and infinities are refused")
    cycle: list = []
    cycle.append(cycle)
    for bad, kind in (({1, 2}, "set"), ({"d": dt.date(2026, 1, 1)}, "dict"), (cycle, "list"),
                      (object(), "object")):
        assert refused(codec.validate, bad) == f"expected a JSON-serialisable value, got {kind}"
    assert refused(codec.parse, "{}") == "JSON cannot be compared with a typed value"
    assert codec.describe() == {"type": "json", "finite": True} and not codec.parseable


def test_json_text_without_the_c_encoder_is_the_same(monkeypatch):
    value = {"b": [1, 2.5, "é\\u0000"], "a": None}
    fast = JSONCodec().to_db(value)
    monkeypatch.setattr(codec_module, "_c_encoder", None)
    assert JSONCodec().to_db(value) == fast
    assert refused(JSONCodec().to_db, {"x": math.nan}, match="NaN and infinities")


def test_json_copy_text_doubles_backslashes_only():
    codec = JSONCodec()
    assert codec.to_copy('{"a":"b"}') == '{"a":"b"}'
    assert codec.to_copy('{"a":"\\n\\\\"}') == '{"a":"\\\\n\\\\\\\\"}'


# -- COPY text ------------------------------------------------------------------------------


def test_copy_text_of_every_storage_type():
    assert copy_text(None) == "\\N"
    assert copy_text("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert copy_escape("plain") == "plain" and copy_escape("\\N") == "\\\\N"
    assert copy_text(True) == "t" and copy_text(False) == "f"
    assert copy_text(-7) == "-7" and copy_text(2**63 - 1) == "9223372036854775807"
    assert copy_text(0.1) == "0.1" and copy_text(1e300) == "1e+300"
    value = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert copy_text(value) == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert copy_text(dt.date(2026, 1, 2)) == "2026-01-02"
    assert copy_text(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "2026-01-02T03:04:05+00:00")
    assert copy_text(Decimal("1.500000")) == "1.500000"
    assert Codec().to_copy(5) == "5" and MoneyCodec().to_copy(5) == "5"
    with pytest.raises(TypeError, match="no COPY text for list"):
        copy_text([1])


def test_the_base_codec_passes_values_through():
    codec = Codec()
    value = object()
    assert codec.validate(value) is value and codec.to_db(value) is value
    assert codec.parse("x") == "x" and codec.inline("v") is None
    assert codec.describe() == {"type": "a value"}


def test_format_utc_is_utc_whatever_the_machines_time_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        minus5 = dt.timezone(dt.timedelta(hours=-5))
        assert format_utc(dt.datetime(2026, 1, 1, 19, 0, tzinfo=minus5)) == (
            "2026-01-02 00:00:00.000000+00:00")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_arrow_readers_give_arrow_ready_values_from_either_driver():
    value = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    text = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert UUIDCodec().arrow_reader(NATIVE)(value) == text
    assert UUIDCodec().arrow_reader(TEXTUAL)(value.hex) == text
    assert UUIDCodec().arrow_reader(TEXTUAL)(value.hex.upper()) == text
    assert DateCodec().arrow_reader(NATIVE) is None and DateCodec().arrow_reader(TEXTUAL) is str
    assert InstantCodec().arrow_reader(NATIVE) is None
    assert InstantCodec().arrow_reader(TEXTUAL) is str
    assert MoneyCodec().arrow_reader(NATIVE) is None and MoneyCodec().arrow_reader(TEXTUAL) is None
    assert BoolCodec().arrow_reader(TEXTUAL) is bool and Codec().arrow_reader(NATIVE) is None
    document = {"b": 1, "a": [2.5, "é"]}
    canonical = '{"a":[2.5,"é"],"b":1}'
    assert JSONCodec().arrow_reader(NATIVE)(document) == canonical
    assert JSONCodec().arrow_reader(TEXTUAL)(JSONCodec().to_db(document)) == canonical
