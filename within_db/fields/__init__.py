"""Value rules: codecs (codecs.py) and the peewee fields that apply them (columns.py).

Import from ``within_db.fields``: every name is re-exported here.
"""

from within_db.fields.codecs import (
    INLINE_ENV,
    MAX_MICROS,
    MICROS,
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
from within_db.fields.columns import (
    AutoField,
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    CodecField,
    DateField,
    DoubleField,
    EmailField,
    ForeignKeyField,
    IntegerField,
    JSONField,
    MoneyField,
    TextField,
    UTCDateTimeField,
    UUIDField,
    codec_of,
    storage_field,
)

__all__ = [
    "AutoField", "BigAutoField", "BigIntegerField", "BoolCodec", "BooleanField", "CharField",
    "Codec", "CodecField", "DateCodec", "DateField", "DoubleField", "EmailCodec", "EmailField",
    "FloatCodec", "ForeignKeyField", "INLINE_ENV", "InstantCodec", "IntCodec", "IntegerField",
    "JSONCodec", "JSONField", "MAX_MICROS", "MICROS", "MoneyCodec", "MoneyField", "SafeText",
    "TEXT_MAX_LENGTH", "TextCodec", "TextField", "UTC", "UTCDateTimeField", "UUIDCodec",
    "UUIDField", "codec_of", "copy_escape", "copy_text", "format_utc", "normalise_email",
    "storage_field", "to_micros", "utcnow",
]
