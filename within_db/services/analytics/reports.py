"""Report templates and reports, cron schedules in IANA timezones, report exports and
expiring share links."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import peewee
from cronsim import CronSim, CronSimError

from within_db.base import jsonable
from within_db.db import database
from within_db.errors import (
    ValidationError,
    WithinDBError,
)
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
from within_db.services.analytics.boards import _stamps, run_saved_query
from within_db.services.users import token_digest

__all__ = [
    "SHARE_PREFIX", "create_report", "create_report_template", "create_schedule",
    "create_share_link", "due_schedules", "export_report", "mark_ran", "next_run",
    "resolve_share_link", "revoke_share_link",
]

SHARE_PREFIX = "wdbl_"


# -- templates and reports ------------------------------------------------------------------


def create_report_template(name: str, description: str = "", parameters: dict | None = None,
                           created_by: User | None = None,
                           now: dt.datetime | None = None) -> ReportTemplate:
    """Create a reusable report template; ConflictError if the name is taken."""
    if not name or not name.strip():
        raise ValidationError("report template name is empty")
    with conflict_on("report_templates_name", "a report template with that name exists"), \
            database.atomic():
        return ReportTemplate.create(name=name.strip(), description=description,
                                     parameters=parameters or {}, created_by=created_by,
                                     **_stamps(now))


def create_report(owner: User, name: str, saved_query: SavedQuery | None = None,
                  template: ReportTemplate | None = None, parameters: dict | None = None,
                  now: dt.datetime | None = None) -> Report:
    """Create a report over a saved query (the owner's own, or one they may run)."""
    if not name or not name.strip():
        raise ValidationError("report name is empty")
    return Report.create(owner=owner, saved_query=saved_query, template=template,
                         name=name.strip(), parameters=parameters or {}, **_stamps(now))


# -- schedules ------------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f'unknown timezone "{name}"; use an IANA name such as '
                              "Europe/Berlin") from None


def next_run(cron_expression: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """Return the first run strictly after ``after``, computed in ``timezone``, as UTC."""
    if after.tzinfo is None:
        raise ValidationError("naive datetime refused: pass a timezone-aware datetime")
    zone = _zone(timezone)
    try:
        run = next(CronSim(cron_expression, after.astimezone(zone)))
    except CronSimError as exc:
        raise ValidationError(f'invalid cron expression "{cron_expression}": {exc}') from None
    return run.astimezone(dt.UTC)


def create_schedule(report: Report, cron_expression: str, timezone: str = "UTC",
                    recipients: Iterable[str] = (), now: dt.datetime | None = None,
                    is_active: bool = True) -> ScheduledReport:
    """Schedule a report; the first ``next_run_at`` is computed now (stored in UTC)."""
    now = now or utcnow()
    first = next_run(cron_expression, timezone, now)
    return ScheduledReport.create(report=report, cron_expression=cron_expression,
                                  timezone=timezone, recipients=list(recipients),
                                  is_active=is_active, next_run_at=first,
                                  created_at=now, updated_at=now)


def due_schedules(now: dt.datetime | None = None) -> list[ScheduledReport]:
    """Return the active schedules whose next run is at or before ``now``."""
    now = now or utcnow()
    return list(ScheduledReport.select()
                .where(ScheduledReport.is_active == True,  # noqa: E712
                       ScheduledReport.next_run_at <= now)
                .order_by(ScheduledReport.next_run_at, ScheduledReport.id))


def mark_ran(schedule: ScheduledReport, at: dt.datetime) -> ScheduledReport:
    """Record a run at ``at`` and advance ``next_run_at`` past it."""
    schedule.last_run_at = at
    schedule.next_run_at = next_run(schedule.cron_expression, schedule.timezone, at)
    schedule.save()
    return schedule


# -- exports --------------------------------------------------------------------------------


def _write(rows: list[dict[str, Any]], fmt: str, handle: IO[str]) -> None:
    if fmt == "jsonl":
        for row in rows:
            handle.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")
        return
    columns = list(rows[0]) if rows else []
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: jsonable(v) for k, v in row.items()})


def export_report(report: Report, fmt: str, directory: str | os.PathLike[str],
                  requested_by: User | None = None,
                  params: dict[str, Any] | None = None) -> ReportExport:
    """Run the report's saved query and write it as CSV or JSON Lines into ``directory``.

    The file appears whole or not at all (written to a temporary file, then renamed). The
    ``ReportExport`` row records status, rows, location and timings; a failure leaves a
    ``failed`` row with the error and no file.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValidationError(f"export format must be one of {', '.join(EXPORT_FORMATS)}")
    started = utcnow()
    export = ReportExport.create(report=report, format=fmt, status="running",
                                 requested_by=requested_by, created_at=started,
                                 started_at=started)
    target = Path(directory) / f"report-{report.id}-export-{export.id}.{fmt}"
    tmp_name = None
    try:
        saved_query = report.saved_query  # no query when the report has none
        if saved_query is None:
            raise ValidationError("the report has no saved query to export")
        rows = run_saved_query(saved_query, {**report.parameters, **(params or {})},
                               actor=requested_by)
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, newline="",
                                         suffix=".partial", encoding="utf-8") as handle:
            tmp_name = handle.name
            _write(rows, fmt, handle)
        os.replace(tmp_name, target)
        tmp_name = None
    except (WithinDBError, OSError, peewee.DatabaseError) as exc:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        detail = str(exc) if isinstance(exc, WithinDBError) else type(exc).__name__
        ReportExport.update(status="failed", error=detail, finished_at=utcnow()).where(
            ReportExport.id == export.id).execute()
        return ReportExport.get_by_id(export.id)
    ReportExport.update(status="succeeded", row_count=len(rows), location=str(target),
                        finished_at=utcnow()).where(ReportExport.id == export.id).execute()
    return ReportExport.get_by_id(export.id)


# -- share links ----------------------------------------------------------------------------

_RESOURCES: dict[type[peewee.Model], str] = {
    Dashboard: "dashboard", Report: "report", SavedQuery: "saved_query",
    Visualization: "visualization"}


def create_share_link(resource: peewee.Model, permission: str, ttl: dt.timedelta,
                      created_by: User, now: dt.datetime | None = None
                      ) -> tuple[str, ShareLink]:
    """Share a dashboard, report, saved query or visualization; return ``(raw, link)``.

    The raw token is returned once and only its SHA-256 digest is stored.
    """
    kind = _RESOURCES.get(type(resource))
    if kind is None:
        raise ValidationError(f"only {', '.join(_RESOURCES.values())} can be shared")
    if permission not in SHARE_PERMISSIONS:
        raise ValidationError(f"permission must be one of {', '.join(SHARE_PERMISSIONS)}")
    if ttl <= dt.timedelta(0):
        raise ValidationError("a share link needs a positive lifetime")
    raw = SHARE_PREFIX + secrets.token_urlsafe(32)
    now = now or utcnow()
    link = ShareLink.create(resource_type=kind, resource_id=str(resource.get_id()),
                            token_hash=token_digest(raw), prefix=raw[:12],
                            permission=permission, created_by=created_by, created_at=now,
                            expires_at=now + ttl)
    return raw, link


def resolve_share_link(raw: str, now: dt.datetime | None = None
                       ) -> tuple[peewee.Model, str] | None:
    """Return ``(resource, permission)`` for a live link, else None."""
    if not isinstance(raw, str) or not raw:
        return None
    now = now or utcnow()
    link = ShareLink.get_or_none(ShareLink.token_hash == token_digest(raw),
                                 ShareLink.revoked_at.is_null(), ShareLink.expires_at > now)
    if link is None:
        return None
    model = {v: k for k, v in _RESOURCES.items()}[link.resource_type]
    resource = model.get_or_none(model._meta.primary_key == int(link.resource_id))
    return (resource, link.permission) if resource is not None else None


def revoke_share_link(link: ShareLink | str) -> bool:
    """Revoke a link (a row or its raw token); return whether it was live."""
    where = (ShareLink.id == link.id if isinstance(link, ShareLink)
             else ShareLink.token_hash == token_digest(link))
    return bool(ShareLink.update(revoked_at=utcnow())
                .where(where, ShareLink.revoked_at.is_null()).execute())
