"""Regenerate migrations/0001_initial.py from the models (only before 0001 is ever applied)."""

import textwrap

import peewee

import within_db
from within_db import freeze
from within_db.migrate import migrations_dir
from within_db.models import ALL_MODELS

db = within_db.connect("sqlite:///:memory:")
body = freeze.models_source(ALL_MODELS, db)
tables = [m._meta.table_name for m in reversed(peewee.sort_models(ALL_MODELS))]
source = f'''"""Create the whole within_db schema: users, campaigns, ml_system and analytics."""
from peewee import *


{freeze.local_type_source()}


def up(migrator, db):
{textwrap.indent(body, "    ")}


def down(migrator, db):
    for table in {tables!r}:
        migrator.migrate(migrator.drop_table(table))
'''
(migrations_dir() / "0001_initial.py").write_text(source)
