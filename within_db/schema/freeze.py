"""Render models as frozen migration source: inline models with their CHECKs and partial indexes.

playhouse's ``template()`` drops CHECK constraints and partial indexes; this renderer keeps
both, and reduces within_db's custom fields to their storage types so migrations never import
the package.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import peewee

__all__ = ["local_type_source", "models_source", "storage_class"]

_LOCAL_TYPES = {"TIMESTAMPTZ": "TimestampTZField"}
#: within_db's BooleanField adds a named 0/1 CHECK where the column is INTEGER (SQLite); a
#: frozen migration defines the same field locally, so a table it creates keeps that CHECK
_CHECKED_BOOLEAN = "CheckedBooleanField"
_CHECKED_BOOLEAN_SOURCE = f"""class {_CHECKED_BOOLEAN}(BooleanField):
    def ddl(self, ctx):
        from peewee import NodeList  # not in peewee's __all__

        node = super().ddl(ctx)
        if self.ddl_datatype(ctx).sql in ('INTEGER', 'INT'):  # SQLite: keep it 0 or 1
            name = f'{{self.model._meta.table_name}}_{{self.column_name}}_boolean_check'
            node = NodeList((node, SQL(
                f'CONSTRAINT "{{name}}" CHECK ("{{self.column_name}}" IN (0, 1))')))
        return node"""


def storage_class(field: peewee.Field) -> str:
    """Name the peewee class (or a local one in the migration) that stores ``field``."""
    if field.field_type in _LOCAL_TYPES:
        return _LOCAL_TYPES[field.field_type]
    if isinstance(field, peewee.BooleanField) and type(field).ddl is not peewee.Field.ddl:
        return _CHECKED_BOOLEAN
    for cls in type(field).__mro__:
        if cls.__module__ == "peewee":
            return cls.__name__
    raise TypeError(f"{field!r} has no peewee storage class")


def field_source(field: peewee.Field, targets: dict[type[peewee.Model], str]) -> str:
    args = []
    if isinstance(field, peewee.ForeignKeyField):
        rel = field.rel_model
        args.append("'self'" if rel is field.model else targets[rel])
        if field.rel_field is not rel._meta.primary_key:
            args.append(f"field={field.rel_field.name!r}")
        args.append(f"on_delete={field.on_delete!r}")
        if not field.index and not field.unique:
            args.append("index=False")
        if field.column_name != f"{field.name}_id":
            args.append(f"column_name={field.column_name!r}")
    elif field.column_name != field.name:
        args.append(f"column_name={field.column_name!r}")
    if field.primary_key and not isinstance(field, peewee.AutoField):
        args.append("primary_key=True")
    if field.unique:
        args.append("unique=True")
    elif field.index and not isinstance(field, peewee.ForeignKeyField):
        args.append("index=True")
    if field.null:
        args.append("null=True")
    if isinstance(field, peewee.CharField) and field.max_length != 255:
        args.append(f"max_length={field.max_length}")
    if isinstance(field, peewee.DecimalField):
        args.append(f"max_digits={field.max_digits}, decimal_places={field.decimal_places}")
    if field.constraints:
        raise ValueError(f"{field!r}: column constraints are not frozen; use Meta.constraints")
    return f"{storage_class(field)}({', '.join(args)})"


def check_source(node: peewee.NodeList) -> str:
    """Render a named peewee ``Check`` back as ``Check('expr', name='...')``."""
    _, entity, sql = node.nodes
    expression = sql.sql[len("CHECK ("):-1]
    return f"Check({expression!r}, name={entity._path[0]!r})"


def partial_index_source(model: type[peewee.Model], index: peewee.ModelIndex) -> str:
    # Render the real CREATE INDEX and keep its WHERE clause: peewee inlines the literals there.
    # _schema and the index's _expressions, _unique, _name are peewee internals (see setup.cfg).
    schema: Any = model._schema  # type: ignore[attr-defined]
    internals: Any = index
    sql, _ = schema._create_index(index).query()
    where = sql.split(" WHERE ", 1)[1]
    columns = ", ".join(f"{model.__name__}.{f.name}" for f in internals._expressions)
    unique = ", unique=True" if internals._unique else ""
    return (f"{model.__name__}.add_index({model.__name__}.index({columns}{unique}, "
            f"name={internals._name!r}).where(SQL({where!r})))")


def model_source(model: type[peewee.Model], targets: dict[type[peewee.Model], str]) -> list[str]:
    meta = model._meta
    lines = [f"class {model.__name__}(Model):"]
    for field in meta.sorted_fields:
        if storage_class(field) == "AutoField" and field.name == "id":  # implicit in peewee
            continue
        lines.append(f"    {field.name} = {field_source(field, targets)}")
    lines += ["", "    class Meta:", "        database = db", "        legacy_table_names = False",
              f"        table_name = {meta.table_name!r}",
              "        strict_tables = getattr(db, 'strict_tables', False)  # SQLite: STRICT"]
    plain = [ix for ix in meta.indexes if isinstance(ix, (list, tuple))]
    partial = [ix for ix in meta.indexes if not isinstance(ix, (list, tuple))]
    if plain:
        lines.append("        indexes = (")
        lines += [f"            ({tuple(cols)!r}, {unique}),".replace(",),", ",),")
                  for cols, unique in plain]
        lines.append("        )")
    constraints = meta.constraints or []
    if constraints:
        lines.append("        constraints = [")
        lines += [f"            {check_source(c)}," for c in constraints]
        lines.append("        ]")
    lines.append("")
    for index in partial:
        lines.append(partial_index_source(model, index))
    return lines


def stub_source(model: type[peewee.Model]) -> list[str]:
    """A frozen stand-in for an existing table that a new foreign key points at."""
    pk = model._meta.primary_key
    if not isinstance(pk, peewee.Field):
        raise TypeError(f"{model.__name__}: only a single-column primary key can be frozen")
    lines = [f"class {model.__name__}(Model):"]
    if not (storage_class(pk) == "AutoField" and pk.name == "id"):
        lines.append(f"    {pk.name} = {storage_class(pk)}(primary_key=True)")
    lines += ["", "    class Meta:", "        database = db",
              f"        table_name = {model._meta.table_name!r}", ""]
    return lines


def models_source(models: Iterable[type[peewee.Model]]) -> str:
    """Return the body of ``up()`` that creates ``models`` (sorted by dependency)."""
    models = peewee.sort_models(models)  # type: ignore[attr-defined]  # absent from the stubs
    existing = sorted({fk.rel_model for m in models for fk in m._meta.refs
                       if fk.rel_model not in models}, key=lambda m: m.__name__)
    targets = {m: m.__name__ for m in [*models, *existing]}
    out = []
    for model in existing:
        out += stub_source(model)
    for model in models:
        out += model_source(model, targets)
        out.append("")
    names = ", ".join(m.__name__ for m in models)
    out.append(f"db.create_tables([{names}])")
    return "\n".join(out)


def local_type_source() -> str:
    """The field classes frozen models use besides peewee's (see ``storage_class``)."""
    return "\n\n\n".join(
        [*(f"class {name}(Field):\n    field_type = {ftype!r}"
           for ftype, name in _LOCAL_TYPES.items()), _CHECKED_BOOLEAN_SOURCE])
