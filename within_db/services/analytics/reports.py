"""Report templates and reports, cron schedules in IANA timezones, report exports and
expiring share links."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import peewee
from cronsim import CronSim, CronSimError

from within_db import boundary as check
from within_db.base import jsonable
from within_db.boundary import public_api
from within_db.db import database
from within_db.errors import PermissionDeniedError, ValidationError, WithinDBError
from within_db.fields import utcnow
from within_db.integrity import conflict_on
from within_db.models.analytics import (
    EXPORT_FORMATS,
    SHARE_PERMISSIONS,
    Dashboard,
    Report,
    ReportExport,
    ReportTemplate,
    SavedQuery,
    ScheduledReport,
    ShareLink,
    Visualization,
)
from within_db.models.users import User
from within_db.services.analytics.boards import (
    RUN_ANY,
    _name,
    _stamps,
    query_params,
    run_saved_query,
)
from within_db.services.users import has_permission, token_digest, validate_email

__all__ = [
    "SHARE_PREFIX",
    "STALE_EXPORT_AFTER",
    "create_report",
    "create_report_template",
    "create_schedule",
    "create_share_link",
    "due_schedules",
    "export_report",
    "mark_ran",
    "next_run",
    "reap_stale_exports",
    "resolve_share_link",
    "revoke_share_link",
]

SHARE_PREFIX = "wdbl_"
#: a running export older than this is taken for dead (its process was killed)
STALE_EXPORT_AFTER = dt.timedelta(hours=1)
MAX_RECIPIENTS = 100
# OWASP CSV injection: a spreadsheet treats cells starting with these as formulas
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


# -- templates and reports ------------------------------------------------------------------


@public_api
def create_report_template(name: str, description: str = "", parameters: dict | None = None,
                           created_by: User | None = None,
                           now: dt.datetime | None = None) -> ReportTemplate:
    """Create a reusable report template; ConflictError if the name is taken."""
    _name(name, "report template")
    check.text(description, "description", empty=True, multiline=True)
    parameters = check.json_object(parameters, "parameters")
    check.optional_instance(created_by, User, "created_by")
    stamps = _stamps(now)
    with conflict_on("report_templates_name", "a report template with that name exists"), \
            database.atomic():
        return ReportTemplate.create(name=name.strip(), description=description,
                                     parameters=parameters, created_by=created_by, **stamps)


@public_api
def create_report(owner: User, name: str, saved_query: SavedQuery | None = None,
                  template: ReportTemplate | None = None, parameters: dict | None = None,
                  now: dt.datetime | None = None) -> Report:
    """Create a report over a saved query (the owner's own, or one they may run).

    PermissionDeniedError when the query belongs to someone else and the owner lacks
    ``analytics.run_any``: a report would otherwise run it on their behalf later.
    """
    check.instance(owner, User, "owner")
    _name(name, "report")
    check.optional_instance(saved_query, SavedQuery, "saved_query")
    check.optional_instance(template, ReportTemplate, "template")
    parameters = check.json_object(parameters, "parameters")
    stamps = _stamps(now)
    if saved_query is not None and saved_query.owner_id != owner.id \
            and not has_permission(owner, RUN_ANY):
        raise PermissionDeniedError(f"a report over another user's query needs {RUN_ANY}")
    with database.atomic():
        return Report.create(owner=owner, saved_query=saved_query, template=template,
                             name=name.strip(), parameters=parameters, **stamps)


# -- schedules ------------------------------------------------------------------------------


def _zone(name: object) -> ZoneInfo:
    check.text(name, "timezone", max_length=ScheduledReport.timezone.max_length)
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError("unknown timezone; use an IANA name such as Europe/Berlin") \
            from None


@public_api
def next_run(cron_expression: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """Return the first run strictly after ``after``, computed in ``timezone``, as UTC."""
    check.text(cron_expression, "cron_expression",
               max_length=ScheduledReport.cron_expression.max_length)
    zone = _zone(timezone)
    check.instant(after, "after")
    try:
        run = next(CronSim(cron_expression, after.astimezone(zone)))
    except (CronSimError, StopIteration):
        raise ValidationError("invalid cron expression: expected five fields such as "
                              "\"0 9 * * 1-5\"") from None
    except (OverflowError, ValueError):
        raise ValidationError("the cron expression has no run after that time") from None
    return run.astimezone(dt.UTC)


@public_api
def create_schedule(report: Report, cron_expression: str, timezone: str = "UTC",
                    recipients: list[str] = (), now: dt.datetime | None = None,  # type: ignore[assignment]
                    is_active: bool = True) -> ScheduledReport:
    """Schedule a report; the first ``next_run_at`` is computed now (stored in UTC).

    ``recipients`` are email addresses, validated and normalised like account emails.
    """
    check.instance(report, Report, "report")
    emails = check.text_list(recipients, "recipients", max_items=MAX_RECIPIENTS,
                             item=lambda v, _n: validate_email(v))  # type: ignore[arg-type]
    now = check.optional_instant(now, "now") or utcnow()
    check.flag(is_active, "is_active")
    first = next_run(cron_expression, timezone, now)
    with database.atomic():
        return ScheduledReport.create(report=report, cron_expression=cron_expression,
                                      timezone=timezone, recipients=emails,
                                      is_active=is_active, next_run_at=first,
                                      created_at=now, updated_at=now)


@public_api
def due_schedules(now: dt.datetime | None = None) -> list[ScheduledReport]:
    """Return the active schedules whose next run is at or before ``now``."""
    now = check.optional_instant(now, "now") or utcnow()
    return list(ScheduledReport.select()
                .where(ScheduledReport.is_active == True,  # noqa: E712
                       ScheduledReport.next_run_at <= now)
                .order_by(ScheduledReport.next_run_at, ScheduledReport.id))


@public_api
def mark_ran(schedule: ScheduledReport, at: dt.datetime) -> ScheduledReport:
    """Record a run at ``at`` and advance ``next_run_at`` past it."""
    check.instance(schedule, ScheduledReport, "schedule")
    check.instant(at, "at")
    following = next_run(schedule.cron_expression, schedule.timezone, at)
    now = utcnow()
    with database.atomic():
        ScheduledReport.update(last_run_at=at, next_run_at=following, updated_at=now).where(
            ScheduledReport.id == schedule.id).execute()
    schedule.last_run_at, schedule.next_run_at, schedule.updated_at = at, following, now
    return schedule


# -- exports --------------------------------------------------------------------------------


def neutralise(value: str) -> str:
    """Return a CSV cell that no spreadsheet runs as a formula (OWASP: prefix a quote)."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _write(rows: list[dict], fmt: str, handle: IO[str], guard: bool) -> None:
    if fmt == "jsonl":
        for row in rows:
            handle.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")
        return
    columns = list(rows[0]) if rows else []
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        # only text from the data is guarded: numbers (negative ones too) stay numbers
        writer.writerow({k: neutralise(v) if guard and isinstance(v, str) else jsonable(v)
                         for k, v in row.items()})


def _partial(location: str) -> Path:
    return Path(location + ".partial")


@contextlib.contextmanager
def _removing(path: Path) -> Iterator[None]:
    """Delete ``path`` if the block fails, whatever the failure."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def _directory(directory: object) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise ValidationError("directory is required: an existing directory to write into")
    if isinstance(directory, str):
        check.text(directory, "directory", max_length=900)
    path = Path(directory)
    if not path.is_dir():
        raise ValidationError("the export directory does not exist (or is not a directory); "
                              "create it first")
    return path.resolve()


def _fail(export_id: int, exc: BaseException) -> None:
    error = type(exc).__name__
    if isinstance(exc, WithinDBError):
        error = f"{error}: {exc}"
    ReportExport.update(status="failed", error=error[:check.MAX_TEXT],
                        finished_at=utcnow()).where(ReportExport.id == export_id).execute()


@public_api
def export_report(report: Report, fmt: str, directory: str | os.PathLike,
                  requested_by: User | None = None, params: dict | None = None,
                  neutralise_formulas: bool = True) -> ReportExport:
    """Run the report's saved query and write it as CSV or JSON Lines into ``directory``.

    ``directory`` must exist. The file appears whole or not at all: it is written as
    ``<name>.partial`` and renamed. The ``ReportExport`` row records status, rows, location
    and timings; any failure leaves a ``failed`` row naming the error class and no file
    (errors other than within_db's, OS and database errors are raised after that).
    CSV cells of text starting with = + - @ tab or CR get a leading ``'`` unless
    ``neutralise_formulas=False``. Stale running exports are reaped first.
    """
    check.instance(report, Report, "report")
    check.choice(fmt, "fmt", EXPORT_FORMATS)
    folder = _directory(directory)
    check.optional_instance(requested_by, User, "requested_by")
    params = query_params(params)
    check.flag(neutralise_formulas, "neutralise_formulas")
    reap_stale_exports()
    started = utcnow()
    with database.atomic():
        export = ReportExport.create(report=report, format=fmt, status="running",
                                     requested_by=requested_by, created_at=started,
                                     started_at=started)
        target = folder / f"report-{report.id}-export-{export.id}.{fmt}"
        if len(str(target)) > ReportExport.location.max_length - len(".partial"):
            raise ValidationError("the export directory's path is too long")
        # the location is known while running, so a reaper can find the partial file
        export.location = str(target)
        export.save(only=[ReportExport.location])
    partial = _partial(str(target))
    try:
        saved_query = report.saved_query  # no query when the report has none
        if saved_query is None:
            raise ValidationError("the report has no saved query to export")
        with database.atomic():  # a failed query must not poison the caller's transaction
            rows = run_saved_query(saved_query, {**report.parameters, **params},
                                   actor=requested_by)
        with _removing(partial):
            with open(partial, "x", newline="", encoding="utf-8") as handle:
                _write(rows, fmt, handle, neutralise_formulas)
            os.replace(partial, target)
    except BaseException as exc:
        ReportExport.update(location=None).where(ReportExport.id == export.id).execute()
        _fail(export.id, exc)
        if not isinstance(exc, (WithinDBError, OSError, peewee.DatabaseError)):
            raise
        return ReportExport.get_by_id(export.id)
    ReportExport.update(status="succeeded", row_count=len(rows),
                        finished_at=utcnow()).where(ReportExport.id == export.id).execute()
    return ReportExport.get_by_id(export.id)


@public_api
def reap_stale_exports(older_than: dt.timedelta = STALE_EXPORT_AFTER,
                       now: dt.datetime | None = None) -> int:
    """Mark ``running`` exports started more than ``older_than`` ago as failed and delete
    their partial files; return how many. ``export_report`` runs it first."""
    check.duration(older_than, "older_than")
    now = check.optional_instant(now, "now") or utcnow()
    stale = list(ReportExport.select(ReportExport.id, ReportExport.location)
                 .where(ReportExport.status == "running",
                        ReportExport.started_at < now - older_than))
    for export in stale:
        if export.location:
            with contextlib.suppress(OSError):
                _partial(export.location).unlink()
    if stale:
        with database.atomic():
            (ReportExport.update(status="failed", location=None, finished_at=now,
                                 error="StaleExport: still running after "
                                       f"{older_than}; its process is gone")
             .where(ReportExport.id.in_([e.id for e in stale]),
                    ReportExport.status == "running").execute())
    return len(stale)


# -- share links ----------------------------------------------------------------------------

_RESOURCES: dict[type[peewee.Model], str] = {
    Dashboard: "dashboard", Report: "report", SavedQuery: "saved_query",
    Visualization: "visualization"}
_MODELS = {kind: model for model, kind in _RESOURCES.items()}


@public_api
def create_share_link(resource: peewee.Model, permission: str, ttl: dt.timedelta,
                      created_by: User, now: dt.datetime | None = None
                      ) -> tuple[str, ShareLink]:
    """Share a saved dashboard, report, saved query or visualization; return ``(raw, link)``.

    The raw token is returned once and only its SHA-256 digest is stored. The link resolves
    while it is unexpired and unrevoked, its creator is active and the resource exists.
    """
    kind = _RESOURCES.get(type(resource))
    if kind is None:
        raise ValidationError(f"only a {', '.join(_RESOURCES.values())} can be shared")
    check.instance(resource, tuple(_RESOURCES), "resource")
    check.choice(permission, "permission", SHARE_PERMISSIONS)
    check.duration(ttl, "ttl")
    check.instance(created_by, User, "created_by")
    now = check.optional_instant(now, "now") or utcnow()
    raw = SHARE_PREFIX + secrets.token_urlsafe(32)
    with database.atomic():
        link = ShareLink.create(resource_type=kind, resource_id=str(resource.get_id()),
                                token_hash=token_digest(raw), prefix=raw[:12],
                                permission=permission, created_by=created_by,
                                created_at=now, expires_at=now + ttl)
    return raw, link


def _resource_id(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


@public_api
def resolve_share_link(raw: str, now: dt.datetime | None = None
                       ) -> tuple[peewee.Model, str] | None:
    """Return ``(resource, permission)`` for a live link, else None.

    Live: unexpired, unrevoked, created by a user who is still active, and pointing at a
    resource that still exists. Anything that cannot be a link token matches nothing.
    """
    now = check.optional_instant(now, "now") or utcnow()
    if not isinstance(raw, str) or not raw or len(raw) > 256 or "\x00" in raw:
        return None
    link = (ShareLink.select(ShareLink).join(User, on=(ShareLink.created_by == User.id))
            .where(ShareLink.token_hash == token_digest(raw), ShareLink.revoked_at.is_null(),
                   ShareLink.expires_at > now, User.is_active == True)  # noqa: E712
            .first())
    if link is None:
        return None
    model = _MODELS.get(link.resource_type)
    key = _resource_id(link.resource_id)
    if model is None or key is None:
        return None
    resource = model.get_or_none(model._meta.primary_key == key)
    return (resource, link.permission) if resource is not None else None


@public_api
def revoke_share_link(link: ShareLink | str) -> bool:
    """Revoke a link (a row or its raw token); return whether it was live."""
    if isinstance(link, ShareLink):
        where = ShareLink.id == check.instance(link, ShareLink, "link").id
    elif isinstance(link, str):
        if not link or len(link) > 256 or "\x00" in link:
            return False
        where = ShareLink.token_hash == token_digest(link)
    else:
        raise ValidationError(f"link must be a saved ShareLink or a raw link token, not "
                              f"{type(link).__name__}")
    with database.atomic():
        return bool(ShareLink.update(revoked_at=utcnow())
                    .where(where, ShareLink.revoked_at.is_null()).execute())
