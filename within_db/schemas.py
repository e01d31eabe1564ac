"""Pydantic schemas generated from the models: ``<Model>Read`` for every model, and
``<Model>Create`` / ``<Model>Update`` for the models the API writes.

Types, lengths, nullability, defaults and allowed values come from the peewee fields, and
every input value also passes through the field's own ``db_value`` (one source of rules), so
a schema cannot drift from its model. Read schemas leave out ``Meta.private_fields`` and
serialise to JSON exactly as ``to_dict()`` does.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

import peewee
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    SecretStr,
    TypeAdapter,
    WithJsonSchema,
    create_model,
)

from within_db import base
from within_db.base import jsonable
from within_db.errors import ValidationError, WithinDBError
from within_db.fields import MoneyField, UTCDateTimeField, storage_field
from within_db.models import ALL_MODELS
from within_db.models.analytics import SavedQuery
from within_db.models.campaigns import Ad, Campaign
from within_db.models.ml_system import MLModel, ModelVersion, PredictionLog
from within_db.models.users import User
from within_db.services.users import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH

Schema = BaseModel

_MONEY_TEXT = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,6})?$",
               "description": "an amount in currency units, exact to 6 decimal places"}
# Where pydantic's JSON differs from to_dict() (``Z`` offsets, Decimal exponents), serialise
# through jsonable() and say so in the JSON Schema.
_MONEY_OUT = (PlainSerializer(jsonable, return_type=str, when_used="json"),
              WithJsonSchema(_MONEY_TEXT, mode="serialization"),
              WithJsonSchema({"anyOf": [{"type": "integer"}, _MONEY_TEXT]}, mode="validation"))
_INSTANT_OUT = (PlainSerializer(jsonable, return_type=str, when_used="json"),
                WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"))
_STRICT = Field(strict=True)

# Storage field class -> (type read back, type accepted on input, annotations of both).
# Looked up along the MRO, so MoneyField (a BigIntegerField) finds its own entry first.
_TYPES: dict[type[peewee.Field], tuple[Any, Any, tuple[Any, ...]]] = {
    MoneyField: (Decimal, Decimal, _MONEY_OUT),
    UTCDateTimeField: (dt.datetime, AwareDatetime, _INSTANT_OUT),
    peewee.UUIDField: (uuid.UUID, uuid.UUID, ()),
    peewee.BooleanField: (bool, Annotated[bool, _STRICT], ()),
    peewee.IntegerField: (int, Annotated[int, _STRICT], ()),
    peewee.FloatField: (float, Annotated[float, Field(strict=True, allow_inf_nan=False)], ()),
    peewee.DateField: (dt.date, dt.date, ()),
    peewee.JSONField: (Any, JsonValue, ()),
    peewee.CharField: (str, Annotated[str, _STRICT], ()),
    peewee.TextField: (str, Annotated[str, _STRICT], ()),
}


def _types(field: peewee.Field) -> tuple[Any, Any, tuple[Any, ...]]:
    target = storage_field(field)
    for cls in type(target).__mro__:
        if cls in _TYPES:
            return _TYPES[cls]
    raise TypeError(f"{field.model.__name__}.{field.name}: no schema type for "
                    f"{type(target).__name__}")


def key(field: peewee.Field) -> str:
    """Return the name ``to_dict()`` and the schemas use: ``owner_id`` for a foreign key."""
    return field.column_name if isinstance(field, peewee.ForeignKeyField) else field.name


def _codec(field: peewee.Field) -> Callable[[Any], Any]:
    """Return a validator that refuses what the field's own ``db_value`` refuses."""
    target = storage_field(field)
    label = f"{field.model.__name__}.{field.name}"

    def check(value: Any) -> Any:
        if value is None or isinstance(value, SecretStr):
            return value
        try:
            target.db_value(value)
        except WithinDBError as exc:
            raise ValueError(str(exc)) from None
        except (TypeError, ValueError, OverflowError):
            # The driver-level message may quote the value; name the field only.
            raise ValueError(f"{label}: not a valid {type(target).__name__} value") from None
        return value

    return check


def _annotation(field: peewee.Field, *, for_input: bool) -> Any:
    read_type, input_type, extras = _types(field)
    base = input_type if for_input else read_type
    constraints: dict[str, Any] = {}
    if field.choices:
        base = Literal[tuple(value for value, _ in field.choices)]
    else:
        # the codec describes its rule as data: lengths and integer ranges for JSON Schema
        rule = getattr(storage_field(field), "codec", None)
        described = rule.describe() if rule is not None else {}
        if "max_length" in described and not isinstance(field, peewee.ForeignKeyField):
            constraints["max_length"] = described["max_length"]
        if "minimum" in described:
            constraints.update(ge=described["minimum"], le=described["maximum"])
    parts: list[Any] = [base]
    if constraints:
        parts.append(Field(**constraints))
    if for_input:
        parts.append(BeforeValidator(_codec(field)))
    parts.extend(extras)
    annotated = Annotated[tuple(parts)] if len(parts) > 1 else base
    return annotated | None if field.null else annotated


def _default(field: peewee.Field) -> Any:
    default = field.default
    if default is None or isinstance(default, peewee.Node):
        return Field(default=None) if field.null else Field()
    # validated, so a default holds the schema's type (Decimal money, not the int 0)
    if callable(default):
        return Field(default_factory=default, validate_default=True)
    return Field(default=default, validate_default=True)


READ_CONFIG = ConfigDict(from_attributes=True, frozen=True)
WRITE_CONFIG = ConfigDict(extra="forbid", frozen=True)


def read_schema(model: type[base.BaseModel]) -> type[BaseModel]:
    """Build ``<Model>Read``: every public field (no private ones), keyed as ``to_dict()``."""
    fields: dict[str, Any] = {key(f): (_annotation(f, for_input=False), Field())
                              for f in model.public_fields()}
    return create_model(f"{model.__name__}Read", __config__=READ_CONFIG,
                        __doc__=f"One {model.__name__} as the API returns it.",
                        __module__=__name__, **fields)


def _fields(model: type[peewee.Model], names: tuple[str, ...]) -> list[peewee.Field]:
    private = getattr(model._meta, "private_fields", ())
    out = []
    for name in names:
        field = model._meta.fields[name]
        if name in private:
            raise ValueError(f"{model.__name__}.{name} is private and never in a schema")
        out.append(field)
    return out


def create_schema(model: type[peewee.Model], names: tuple[str, ...],
                  **extra: Any) -> type[BaseModel]:
    """Build ``<Model>Create`` from the named fields (with the model's defaults) and ``extra``."""
    fields: dict[str, Any] = {key(f): (_annotation(f, for_input=True), _default(f))
                              for f in _fields(model, names)}
    return create_model(f"{model.__name__}Create", __config__=WRITE_CONFIG,
                        __doc__=f"What a client sends to create one {model.__name__}.",
                        __module__=__name__, **fields, **extra)


def update_schema(model: type[peewee.Model], names: tuple[str, ...]) -> type[BaseModel]:
    """Build ``<Model>Update``: the named fields, each optional; only the ones sent change.

    An explicit null is accepted only where the column is nullable.
    """
    fields: dict[str, Any] = {key(f): (_annotation(f, for_input=True), Field(default=None))
                              for f in _fields(model, names)}
    return create_model(f"{model.__name__}Update", __config__=WRITE_CONFIG,
                        __doc__=f"A partial update of one {model.__name__}: unset fields stay.",
                        __module__=__name__, **fields)


@functools.cache
def input_adapter(field: peewee.Field) -> TypeAdapter[Any]:
    """Return a TypeAdapter validating one input value of ``field`` (filters, cursor keys)."""
    return TypeAdapter(_annotation(field, for_input=True))


def changes(update: BaseModel) -> dict[str, Any]:
    """Return the fields an Update schema was given (not its defaults), as Python values."""
    return update.model_dump(exclude_unset=True)


READ: dict[type[peewee.Model], type[BaseModel]] = {m: read_schema(m) for m in ALL_MODELS}

# Every Read schema by name (``within_db.schemas.TrainingJobRead``); the ones the
# repositories use are also spelled out for type checkers.
globals().update({schema.__name__: schema for schema in READ.values()})
UserRead = READ[User]
CampaignRead = READ[Campaign]
AdRead = READ[Ad]
MLModelRead = READ[MLModel]
ModelVersionRead = READ[ModelVersion]
PredictionLogRead = READ[PredictionLog]
SavedQueryRead = READ[SavedQuery]

CampaignWithAds = create_model(
    "CampaignWithAds", __config__=READ_CONFIG, __module__=__name__,
    __doc__="A campaign with its ads (the design's user-campaigns view).",
    campaign=(CampaignRead, Field()), ads=(list[AdRead], Field()))  # type: ignore[valid-type]

_CAMPAIGN_FIELDS = ("name", "objective", "platform", "status", "start_date", "end_date",
                    "total_budget_micros", "currency", "metadata")
_AD_FIELDS = ("name", "headline", "body", "call_to_action", "creative_type", "media_url",
              "status")
_PASSWORD = Annotated[SecretStr, Field(min_length=PASSWORD_MIN_LENGTH,
                                       max_length=PASSWORD_MAX_LENGTH)]

UserCreate = create_schema(User, ("email", "full_name"), password=(_PASSWORD, Field()))
UserUpdate = update_schema(User, ("full_name", "is_active"))
CampaignCreate = create_schema(Campaign, _CAMPAIGN_FIELDS)
CampaignUpdate = update_schema(Campaign, _CAMPAIGN_FIELDS)
AdCreate = create_schema(Ad, _AD_FIELDS)
AdUpdate = update_schema(Ad, _AD_FIELDS)
MLModelCreate = create_schema(MLModel, ("name", "task", "description"))
MLModelUpdate = update_schema(MLModel, ("description",))
ModelVersionCreate = create_schema(ModelVersion, ("artifact_uri", "framework",
                                                  "hyperparameters", "description"))
ModelVersionUpdate = update_schema(ModelVersion, ("stage", "description"))
SavedQueryCreate = create_schema(SavedQuery, ("name", "description", "definition"))
SavedQueryUpdate = update_schema(SavedQuery, ("name", "description", "definition"))

WRITE: dict[type[peewee.Model], tuple[type[BaseModel], type[BaseModel]]] = {
    User: (UserCreate, UserUpdate),
    Campaign: (CampaignCreate, CampaignUpdate),
    Ad: (AdCreate, AdUpdate),
    MLModel: (MLModelCreate, MLModelUpdate),
    ModelVersion: (ModelVersionCreate, ModelVersionUpdate),
    SavedQuery: (SavedQueryCreate, SavedQueryUpdate),
}


def schemas_by_name() -> dict[str, type[BaseModel]]:
    """Return every schema by its name (``CampaignRead``, ``CampaignCreate``, ...)."""
    out = {s.__name__: s for s in READ.values()}
    for create, update in WRITE.values():
        out[create.__name__] = create
        out[update.__name__] = update
    return dict(sorted(out.items()))


def json_schema(name: str | None = None) -> dict[str, Any]:
    """Return the JSON Schema of one schema or model name, or of all of them.

    A model name (``Campaign``) gives its Read, Create and Update schemas. Raises
    ValidationError for an unknown name, listing the known ones.
    """
    known = schemas_by_name()
    if name is None:
        chosen = known
    else:
        chosen = {n: s for n, s in known.items()
                  if n == name or n in (f"{name}Read", f"{name}Create", f"{name}Update")}
        if not chosen:
            models = sorted(m.__name__ for m in READ)
            raise ValidationError(f"no schema or model named {name!r}; models: "
                                  f"{', '.join(models)}")
    return {n: s.model_json_schema(mode="serialization" if n.endswith("Read")
                                   else "validation")
            for n, s in chosen.items()}


__all__ = [
    "READ",
    "WRITE",
    "AdCreate",
    "AdUpdate",
    "CampaignCreate",
    "CampaignUpdate",
    "CampaignWithAds",
    "MLModelCreate",
    "MLModelUpdate",
    "ModelVersionCreate",
    "ModelVersionUpdate",
    "SavedQueryCreate",
    "SavedQueryUpdate",
    "Schema",
    "UserCreate",
    "UserUpdate",
    "changes",
    "create_schema",
    "input_adapter",
    "json_schema",
    "key",
    "read_schema",
    "schemas_by_name",
    "update_schema",
    *sorted(schema.__name__ for schema in READ.values()),
]
