"""The public API's boundary, fuzzed: every public function of within_db.services and
within_db.batch, every parameter, a catalogue of bad values, on both backends.

Each call runs in a savepoint with its other arguments valid. It must either raise a
WithinDBError (with no driver text) and leave every table's row count as it was, or succeed
where the value is acceptable for that parameter (listed in ACCEPTED, or None for a
parameter that defaults to None).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import inspect
import pkgutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest

import within_db.services
from within_db import batch
from within_db.boundary import public_api
from within_db.errors import ConflictError, NotFoundError, ValidationError, WithinDBError
from within_db.models import ALL_MODELS
from within_db.models.analytics import ScheduledReport, ShareLink
from within_db.models.campaigns import Campaign
from within_db.models.ml_system import PredictionLog
from within_db.models.users import AccessToken, Credential, Permission, Role, User
from within_db.services import analytics as an
from within_db.services import ml_system as ml
from within_db.services import users
from within_db.services.campaigns import get_user_campaigns

from .helpers import DEFINITION, make_campaign, make_report

UTC = dt.UTC
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PASSWORD = "a sufficiently long passphrase"
_HASH = users.hash_password(PASSWORD)


def public_functions() -> dict[str, Callable]:
    """Every function named in the ``__all__`` of a module under within_db.services, and of
    within_db.batch, once each (keyed by its qualified name)."""
    modules = [batch, within_db.services]
    for info in pkgutil.walk_packages(within_db.services.__path__, "within_db.services."):
        modules.append(importlib.import_module(info.name))
    found = {}
    for module in modules:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                found[f"{obj.__module__}.{obj.__name__}"] = obj
    return found


def _deep(depth: int) -> list:
    root: list = []
    node = root
    for _ in range(depth):
        child: list = []
        node.append(child)
        node = child
    return root


class _Opaque:
    """An object no layer knows how to store."""


BAD: dict[str, Any] = {
    "none": None,
    "empty": "",
    "int": 12345678901234,
    "huge_int": 2**80,
    "negative": -1,
    "float": 1.5,
    "nan": float("nan"),
    "inf": float("inf"),
    "bool": True,
    "megabyte": "x" * 1_000_000,
    "nul": "a\x00b",
    "invisible": "a\u200bb",
    "naive_datetime": dt.datetime(2026, 1, 1),
    "non_json": {"key": _Opaque()},
    "object": _Opaque(),
    "bytes": b"\xff\x00",
    "list": [1, "a"],
    "dict": {"a": 1},
    "deep": _deep(5_000),
    "unsaved": "unsaved",  # built per parameter: an unsaved instance of the expected class
    "wrong_model": "wrong_model",  # a saved instance of another model class
}


@dataclasses.dataclass
class World:
    """Saved rows every call can use as valid arguments."""

    user: User
    other: User
    role: Any
    permission: Permission
    token_raw: str
    token: Any
    campaign: Campaign
    model: Any
    job: Any
    running_job: Any
    version: Any
    saved_query: Any
    visualization: Any
    dashboard: Any
    widget: Any
    template: Any
    report: Any
    schedule: Any
    link_raw: str
    link: Any
    directory: str


def _world(tmp_path) -> World:
    user = users.create_user("owner@example.com", password_hash=_HASH, full_name="Owner")
    other = users.create_user("other@example.com", password_hash=_HASH)
    role = users.create_role("analyst", ["campaigns.view"])
    token_raw, token = users.issue_token(user)
    model = ml.register_model("ctr", "classification")
    job = ml.queue_training_job(model)
    running_job = ml.mark_running(ml.queue_training_job(model))
    version = ml.create_version(model, "s3://models/ctr/1")
    saved_query = an.create_saved_query(user, "q", DEFINITION)
    visualization = an.create_visualization(saved_query, "chart", "bar")
    dashboard = an.create_dashboard(user, "board")
    widget = an.add_widget(dashboard, visualization, 0, 0, 4, 4)
    report = an.create_report(user, "report", saved_query=saved_query)
    link_raw, link = an.create_share_link(dashboard, "view", dt.timedelta(days=1), user)
    return World(
        user=user, other=other, role=role, permission=Permission.get(), token_raw=token_raw,
        token=token, campaign=make_campaign(owner=user), model=model, job=job,
        running_job=running_job, version=version, saved_query=saved_query,
        visualization=visualization, dashboard=dashboard, widget=widget,
        template=an.create_report_template("template"), report=report,
        schedule=an.create_schedule(report, "0 9 * * *", "Europe/Berlin"),
        link_raw=link_raw, link=link, directory=str(tmp_path))


# Valid keyword arguments per function; parameters left out keep their defaults.
VALID: dict[str, Callable[[World], dict[str, Any]]] = {
    "users.validate_email": lambda w: {"email": "new@example.com"},
    "users.hash_password": lambda w: {"password": PASSWORD},
    "users.create_user": lambda w: {"email": "new@example.com", "password": PASSWORD},
    "users.find_user": lambda w: {"email_or_id": "owner@example.com"},
    "users.authenticate": lambda w: {"email": "owner@example.com", "password": PASSWORD},
    "users.set_password": lambda w: {"user": w.user, "new_password": PASSWORD + "!"},
    "users.token_digest": lambda w: {"raw": "wdbs_x"},
    "users.issue_token": lambda w: {"user": w.user},
    "users.verify_token": lambda w: {"raw": w.token_raw},
    "users.revoke_token": lambda w: {"token": w.token},
    "users.revoke_all": lambda w: {"user": w.user},
    "users.ensure_permission": lambda w: {"codename": "models.view"},
    "users.create_role": lambda w: {"name": "viewer", "permissions": ["models.view"]},
    "users.grant_role": lambda w: {"user": w.user, "role": w.role},
    "users.revoke_role": lambda w: {"user": w.user, "role": w.role},
    "users.has_permission": lambda w: {"user": w.user, "codename": "campaigns.view"},
    "users.permissions_of": lambda w: {"user": w.user},
    "users.role_names": lambda w: {"user": w.user},
    "audit.record_event": lambda w: {"actor": w.user, "action": "test.event",
                                     "target": w.campaign},
    "audit.verify_audit_chain": lambda w: {},
    "audit.checkpoint": lambda w: {"key": "boundary-test-key-0123456789abcdef"},
    "audit.audit_key": lambda w: {"key": "boundary-test-key-0123456789abcdef"},
    "audit.row_digest": lambda w: {"prev_hash": "0" * 64, "actor_id": None, "action": "a",
                                   "target_type": None, "target_id": None, "metadata": {},
                                   "ip": None, "created_at": NOW},
    "campaigns.get_user_campaigns": lambda w: {"user_id": w.user.id},
    "ml_system.register_model": lambda w: {"name": "cvr", "task": "regression"},
    "ml_system.create_version": lambda w: {"model": w.model, "artifact_uri": "s3://m/2"},
    "ml_system.transition_stage": lambda w: {"version": w.version, "stage": "staging"},
    "ml_system.production_version": lambda w: {"model_name": "ctr"},
    "ml_system.queue_training_job": lambda w: {"model": w.model},
    "ml_system.mark_running": lambda w: {"job": w.job},
    "ml_system.mark_succeeded": lambda w: {"job": w.running_job},
    "ml_system.mark_failed": lambda w: {"job": w.running_job, "error": "out of memory"},
    "ml_system.mark_cancelled": lambda w: {"job": w.job},
    "ml_system.log_metrics": lambda w: {"version": w.version, "metrics": {"auc": 0.8}},
    "ml_system.log_feature_importance": lambda w: {"version": w.version,
                                                   "importances": {"age": 0.5}},
    "ml_system.log_predictions": lambda w: {"version": w.version,
                                            "rows": [{"request_id": "r1", "score": 0.5}]},
    "ml_system.training_rows": lambda w: {"start": dt.date(2026, 1, 1),
                                          "end": dt.date(2026, 2, 1)},
    "boards.create_saved_query": lambda w: {"owner": w.user, "name": "q2",
                                            "definition": DEFINITION},
    "boards.run_saved_query": lambda w: {"saved_query": w.saved_query},
    "boards.create_visualization": lambda w: {"saved_query": w.saved_query, "name": "c2",
                                              "chart_type": "table"},
    "boards.create_dashboard": lambda w: {"owner": w.user, "name": "board 2"},
    "boards.add_widget": lambda w: {"dashboard": w.dashboard, "visualization": w.visualization,
                                    "x": 4, "y": 0, "width": 4, "height": 4},
    "boards.move_widget": lambda w: {"widget": w.widget, "x": 6, "y": 0},
    "boards.remove_widget": lambda w: {"widget": w.widget},
    "reports.create_report_template": lambda w: {"name": "template 2"},
    "reports.create_report": lambda w: {"owner": w.user, "name": "report 2"},
    "reports.next_run": lambda w: {"cron_expression": "0 9 * * *", "timezone": "UTC",
                                   "after": NOW},
    "reports.create_schedule": lambda w: {"report": w.report, "cron_expression": "0 9 * * *"},
    "reports.due_schedules": lambda w: {},
    "reports.mark_ran": lambda w: {"schedule": w.schedule, "at": NOW},
    "reports.export_report": lambda w: {"report": w.report, "fmt": "csv",
                                        "directory": w.directory},
    "reports.reap_stale_exports": lambda w: {},
    "reports.create_share_link": lambda w: {"resource": w.dashboard, "permission": "view",
                                            "ttl": dt.timedelta(days=1), "created_by": w.user},
    "reports.resolve_share_link": lambda w: {"raw": w.link_raw},
    "reports.revoke_share_link": lambda w: {"link": w.link},
    "catalogue.catalogue": lambda w: {},
    "definitions.validate_definition": lambda w: {"definition": DEFINITION},
    "compiler.compile_definition": lambda w: {"definition": DEFINITION},
    "compiler.execute_definition": lambda w: {"definition": DEFINITION},
    "batch.bulk_insert": lambda w: {"model": PredictionLog, "rows": [
        {"model_version": w.version.id, "request_id": "b1", "score": 0.1}]},
    "batch.stream": lambda w: {"query": User.select().dicts()},
    "batch.to_dataframe": lambda w: {"query": User.select()},
    "batch.to_arrow": lambda w: {"query": User.select()},
    "batch.partitions": lambda w: {"query": PredictionLog.select(), "n": 2},
    "batch.to_dask": lambda w: {"query": PredictionLog.select(), "npartitions": 2},
}

# (function, parameter) -> kinds of "bad" value that are in fact acceptable there, and why.
_TEXT_OK = {"empty"}  # free text that may be empty (descriptions, names shown to people)
ACCEPTED: dict[tuple[str, str], set[str]] = {
    ("users.create_user", "full_name"): _TEXT_OK,
    ("users.create_user", "is_superuser"): {"bool"},
    ("users.create_user", "is_active"): {"bool"},
    # a malformed email is a failed login attempt like an unknown one, and is audited
    ("users.authenticate", "email"): {"empty"},
    ("users.authenticate", "password"): {"empty"},
    ("users.ensure_permission", "description"): _TEXT_OK,
    ("users.create_role", "description"): _TEXT_OK,
    ("users.create_role", "permissions"): set(),
    ("users.issue_token", "name"): _TEXT_OK,
    ("audit.record_event", "actor"): {"none"},  # a system event
    ("audit.record_event", "target"): {"wrong_model"},  # any saved row can be a target
    ("audit.record_event", "metadata"): {"dict"},
    ("ml_system.register_model", "description"): _TEXT_OK,
    ("ml_system.create_version", "framework"): _TEXT_OK,
    ("ml_system.create_version", "description"): _TEXT_OK,
    ("ml_system.create_version", "hyperparameters"): {"dict"},
    ("ml_system.queue_training_job", "parameters"): {"dict"},
    ("ml_system.queue_training_job", "dataset_spec"): {"dict"},
    ("ml_system.mark_failed", "error"): set(),
    ("ml_system.log_metrics", "metrics"): {"dict"},
    ("ml_system.log_feature_importance", "importances"): {"dict"},
    ("boards.create_saved_query", "description"): _TEXT_OK,
    ("boards.create_dashboard", "description"): _TEXT_OK,
    ("reports.create_report_template", "description"): _TEXT_OK,
    ("reports.create_report_template", "parameters"): {"dict"},
    ("reports.create_report", "parameters"): {"dict"},
    ("reports.create_schedule", "recipients"): set(),
    ("reports.create_schedule", "is_active"): {"bool"},
    ("reports.export_report", "params"): {"dict"},  # a failed export row is its outcome
    ("reports.export_report", "neutralise_formulas"): {"bool"},
    ("reports.export_report", "requested_by"): set(),
    ("reports.create_share_link", "resource"): set(),
}
# export_report records every attempt that passes argument checks, successful or not
_EXPORT_RECORDS = {"reports.export_report"}


def _short(qualified: str) -> str:
    if qualified.startswith("within_db.batch."):  # batch/ is one public module
        return "batch." + qualified.rpartition(".")[2]
    return ".".join(qualified.split(".")[-2:])


def _bad_value(kind: str, valid: Any, world: World) -> Any:
    if kind == "unsaved":
        cls = type(valid) if isinstance(valid, peewee.Model) else User
        return cls()
    if kind == "wrong_model":
        return world.role if isinstance(valid, Permission) else world.permission
    return BAD[kind]


def _counts(db) -> tuple[int, ...]:
    tables = [m._meta.table_name for m in ALL_MODELS]
    sql = "SELECT " + ", ".join(f'(SELECT COUNT(*) FROM "{t}")' for t in tables)
    return tuple(db.execute_sql(sql).fetchone())


_LEAKS = ("DETAIL", "Key (", "constraint failed", "$argon2", "psycopg2", "sqlite3",
          "Traceback", "violates")


def _call(func: Callable, kwargs: dict[str, Any]) -> Any:
    result = func(**kwargs)
    if isinstance(result, Iterator):
        try:
            next(result, None)
        except WithinDBError as exc:
            raise AssertionError(f"refused only when iterated, not when called: {exc}") \
                from None
    return result


def _probe(db, func, name, param, kind, kwargs, before) -> str | None:
    """Run one call in a savepoint; return a failure description, or None."""
    with db.atomic() as savepoint:
        try:
            try:
                _call(func, kwargs)
                raised = None
            except WithinDBError as exc:
                raised = exc
            except AssertionError as exc:
                return f"{name}({param}={kind}): {exc}"
            except Exception as exc:  # noqa: BLE001 - what the boundary must never let out
                return f"{name}({param}={kind}) escaped as {type(exc).__name__}: {exc!s:.200}"
            try:
                after = _counts(db)
            except peewee.DatabaseError as exc:
                return f"{name}({param}={kind}) left the transaction unusable: " \
                       f"{type(exc).__name__}"
            if raised is not None:
                leaked = [w for w in _LEAKS if w in str(raised)]
                if leaked:
                    return f"{name}({param}={kind}) message carries {leaked}: {raised!s:.200}"
                if after != before:
                    return f"{name}({param}={kind}) raised {type(raised).__name__} but wrote"
                return None
            if after != before and kind not in ACCEPTED.get((_short(name), param), set()) \
                    and not (kind == "none" and inspect.signature(func).parameters[param]
                             .default is None) \
                    and _short(name) not in _EXPORT_RECORDS:
                return f"{name}({param}={kind}) was accepted and wrote rows"
            return None
        finally:
            savepoint.rollback()


def test_every_public_function_has_valid_arguments_here():
    names = {_short(n) for n in public_functions()}
    assert names == set(VALID), (
        f"missing: {sorted(names - set(VALID))}, stale: {sorted(set(VALID) - names)}")
    assert len(names) >= 55


def test_every_public_function_wears_the_boundary():
    bare = [n for n, f in public_functions().items()
            if not getattr(f, "__within_db_public__", False)]
    assert bare == []


def test_bad_arguments_raise_within_db_errors_and_write_nothing(db, tmp_path):
    world = _world(tmp_path)
    before = _counts(db)
    failures, calls = [], 0
    for qualified, func in sorted(public_functions().items()):
        name = _short(qualified)
        valid = VALID[name](world)
        with db.atomic() as savepoint:  # the valid call itself must work
            _call(func, dict(valid))
            savepoint.rollback()
        for param in inspect.signature(func).parameters:
            for kind in BAD:
                kwargs = {**valid, param: _bad_value(kind, valid.get(param), world)}
                calls += 1
                failure = _probe(db, func, name, param, kind, kwargs, before)
                if failure:
                    failures.append(failure)
    assert calls > 2_000
    assert failures == [], f"{len(failures)} of {calls} calls:\n" + "\n".join(failures[:60])


# -- the cases that escaped before, one by one ------------------------------------------------


def _user(email="jane@example.com"):
    return users.create_user(email, password_hash=_HASH)


def test_wrong_types_are_refused_with_within_db_errors(db):
    user = _user()
    with pytest.raises(ValidationError, match="password must be text"):
        users.authenticate("jane@example.com", 12345678901234)
    with pytest.raises(ValidationError, match="ttl must be a timedelta"):
        users.issue_token(user, ttl=3600)
    with pytest.raises(ValidationError, match="dotted lower-case"):
        users.create_role("r", ["Bad Codename"])
    assert Role.select().count() == 0 and Permission.select().count() == 0
    with pytest.raises(ValidationError, match="timezone is longer"):
        an.create_schedule(make_report(owner=user), "0 9 * * *", "x" * 1_000_000)
    assert ScheduledReport.select().count() == 0


def test_generators_refuse_bad_arguments_when_called_not_when_iterated(db):
    with pytest.raises(ValidationError, match="start must be a date"):
        ml.training_rows(None, None)
    with pytest.raises(ValidationError, match="chunk_size must be from 1"):
        batch.stream(User.select().dicts(), chunk_size=-1)
    with pytest.raises(ValidationError, match="query must be a peewee select"):
        batch.stream("SELECT 1")


def test_no_hash_rides_on_an_error(db):
    user = _user()
    board = an.create_dashboard(user, "board")
    with pytest.raises(ValidationError) as info:
        users.issue_token(user, name=None)
    assert "name must be text" in str(info.value)
    with pytest.raises(ValidationError) as info:
        an.create_share_link(board, "view", dt.timedelta(days=1), None)
    assert "created_by must be a saved User" in str(info.value)
    unsaved = User(email="ghost@example.com")
    with pytest.raises(ValidationError, match="unsaved User") as info:
        users.set_password(unsaved, PASSWORD)
    assert "$argon2" not in str(info.value)
    assert AccessToken.select().count() == 0 and ShareLink.select().count() == 0
    assert Credential.select().count() == 1


def test_a_driver_integrity_error_becomes_a_named_conflict_without_the_row(db):
    user = _user()
    digest = "ab" * 32
    AccessToken.create(user=user, token_hash=digest, kind="session", prefix="wdbs_",
                       created_at=NOW, expires_at=NOW + dt.timedelta(days=1))

    @public_api
    def duplicate() -> None:
        with db.atomic():
            AccessToken.insert(user=user.id, token_hash=digest, kind="session", prefix="x",
                               created_at=NOW, expires_at=NOW + dt.timedelta(days=1)).execute()

    with pytest.raises(ConflictError) as info:
        duplicate()
    message = str(info.value)
    assert "access_tokens_token_hash" in message
    assert digest not in message and "DETAIL" not in message and "Key (" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert AccessToken.select().count() == 1


def test_a_driver_data_error_becomes_a_validation_error(db):
    @public_api
    def too_long() -> None:
        with db.atomic():
            db.execute_sql("SELECT CAST(%s AS INTEGER) + 1" if db.kind == "postgres"
                           else "SELECT CAST(? AS INTEGER) + 1", ("not a number",))
            if db.kind == "sqlite":  # SQLite casts anything: ask for a real data error
                raise sqlite3.DataError("simulated")

    with pytest.raises(ValidationError, match="does not fit its column"):
        too_long()


def test_malformed_ids_get_the_same_answer_on_both_backends(db):
    with pytest.raises(ValidationError, match="user_id must be a UUID"):
        get_user_campaigns("not-a-uuid")
    assert get_user_campaigns(str(uuid.uuid4())) is None
    with pytest.raises(NotFoundError):
        users.find_user("not-a-uuid")
