"""Factories for test rows and an assertion for named constraint violations."""

import contextlib
import datetime as dt
import itertools
from decimal import Decimal

import peewee
import pytest
from playhouse.test_utils import count_queries

from within_db.integrity import violation
from within_db.models.analytics import (
    Dashboard,
    Report,
    SavedQuery,
    Visualization,
)
from within_db.models.campaigns import Ad, Campaign
from within_db.models.ml_system import MLModel, ModelVersion
from within_db.models.users import User

UTC = dt.UTC
_seq = itertools.count(1)

DEFINITION = {
    "dataset": "campaign_performance",
    "dimensions": ["platform"],
    "metrics": ["impressions", "clicks"],
}


def make_user(email=None, **kw):
    return User.create(email=email or f"user{next(_seq)}@example.com", **kw)


def make_campaign(owner=None, **kw):
    values = dict(name=f"Campaign {next(_seq)}", objective="sales", platform="google",
                  status="active", start_date=dt.date(2026, 1, 1),
                  end_date=dt.date(2026, 3, 31), total_budget_micros=Decimal("1000.50"),
                  currency="USD")
    values.update(kw)
    return Campaign.create(owner=owner or make_user(), **values)


def make_ad(campaign=None, **kw):
    values = dict(name=f"Ad {next(_seq)}", headline="Buy now", body="Great deal",
                  creative_type="image", status="active")
    values.update(kw)
    return Ad.create(campaign=campaign or make_campaign(), **values)


def make_model(**kw):
    values = dict(name=f"ctr-model-{next(_seq)}", task="classification")
    values.update(kw)
    return MLModel.create(**values)


def make_version(model=None, version=None, **kw):
    model = model or make_model()
    version = version or (ModelVersion.select().where(ModelVersion.model == model).count() + 1)
    return ModelVersion.create(model=model, version=version,
                               artifact_uri=f"s3://models/{model.name}/{version}", **kw)


def make_saved_query(owner=None, **kw):
    values = dict(name=f"Query {next(_seq)}", definition=DEFINITION)
    values.update(kw)
    return SavedQuery.create(owner=owner or make_user(), **values)


def make_visualization(saved_query=None, **kw):
    values = dict(name=f"Chart {next(_seq)}", chart_type="bar")
    values.update(kw)
    return Visualization.create(saved_query=saved_query or make_saved_query(), **values)


def make_report(owner=None, **kw):
    owner = owner or make_user()
    values = dict(name=f"Report {next(_seq)}")
    values.update(kw)
    values.setdefault("saved_query", make_saved_query(owner=owner))
    return Report.create(owner=owner, **values)


def make_dashboard(owner=None, **kw):
    values = dict(name=f"Board {next(_seq)}")
    values.update(kw)
    return Dashboard.create(owner=owner or make_user(), **values)


@contextlib.contextmanager
def raises_violation(db, kind, name):
    """Assert the block fails on the named constraint (name None: any of that kind)."""
    with pytest.raises(peewee.IntegrityError) as info:
        with db.atomic():
            yield
    found = violation(info.value, db)
    assert found is not None, f"unrecognised integrity error: {info.value}"
    assert found.kind == kind, found
    if kind == "foreign_key" and not isinstance(db, peewee.PostgresqlDatabase):
        assert found.name is None  # SQLite does not say which foreign key failed
    elif name is not None:
        assert found.name == name, found


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


class Statements(list):
    """The SQL statements a block ran, transaction control left out (filled on exit)."""


@contextlib.contextmanager
def statements():
    """Collect the data statements (SELECT, INSERT, ...) the block sends to the database."""
    found = Statements()
    with count_queries() as counter:
        yield found
    found.extend(q.msg[0] for q in counter.get_queries()
                 if not q.msg[0].lstrip().upper().startswith(TRANSACTION_CONTROL))


_roles = itertools.count(1)


def user_with(*permissions, **kw):
    """Create a user holding ``permissions`` through a role of their own."""
    from within_db.services.users import create_role, grant_role

    user = make_user(**kw)
    if permissions:
        grant_role(user, create_role(f"role-{next(_roles)}-{user.id.hex[:8]}",
                                     list(permissions)))
    return user
