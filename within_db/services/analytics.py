"""Analytics services: saved queries with access checks, visualizations, dashboards,
cron schedules in IANA timezones, report exports and expiring share links.

The query compiler itself lives in ``services.queries``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import peewee
from cronsim import CronSim, CronSimError

from within_db.base import jsonable
from within_db.db import bound, database, write_transaction
from within_db.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
    WithinDBError,
)
from within_db.fields import utcnow
from within_db.integrity import conflict_on
from within_db.models.analytics import (
    CHART_TYPES,
    EXPORT_FORMATS,
    GRID_COLUMNS,
    SHARE_PERMISSIONS,
    Dashboard,
    DashboardWidget,
    Report,
    ReportExport,
    SavedQuery,
    ScheduledReport,
    ShareLink,
    Visualization,
)
from within_db.models.users import User
from within_db.services.queries import execute_definition, validate_definition
from within_db.services.users import has_permission, token_digest

RUN_ANY = "analytics.run_any"
SHARE_PREFIX = "wdbl_"
_OPTION_KEYS = {"title", "subtitle", "color", "colors", "stacked", "y_axis", "x_axis",
                "legend", "format", "precision", "show_values", "sort"}


# -- saved queries --------------------------------------------------------------------------


def _stamps(now: dt.datetime | None) -> dict:
    now = now or utcnow()
    return {"created_at": now, "updated_at": now}


def create_saved_query(owner: User, name: str, definition: dict, description: str = "",
                       now: dt.datetime | None = None) -> SavedQuery:
    """Store a validated definition; ConflictError if the owner already has that name."""
    validate_definition(definition)
    with conflict_on("saved_queries_owner_id_name",
                     "you already have a saved query with that name"), database.atomic():
        return SavedQuery.create(owner=owner, name=name, definition=definition,
                                 description=description, **_stamps(now))


def run_saved_query(saved_query: SavedQuery, params: dict | None = None,
                    owner: User | None = None) -> list[dict[str, Any]]:
    """Run a saved query for ``owner`` (the acting user) and return its rows.

    Allowed for the query's owner or a holder of ``analytics.run_any``; ``owner=None`` is a
    trusted internal call on the query owner's behalf (exports, schedules).
    """
    if owner is not None and owner.id != saved_query.owner_id and \
            not has_permission(owner, RUN_ANY):
        raise PermissionDeniedError(f"running another user's query needs {RUN_ANY}")
    return execute_definition(saved_query.definition, params)


# -- visualizations -------------------------------------------------------------------------


def _check_chart(chart_type: str, options: dict, definition: dict) -> None:
    if chart_type not in CHART_TYPES:
        raise ValidationError(f'unknown chart type "{chart_type}"; valid: '
                              f"{', '.join(CHART_TYPES)}")
    unknown = set(options) - _OPTION_KEYS
    if unknown:
        raise ValidationError(f"unknown chart options: {', '.join(sorted(unknown))}; valid: "
                              f"{', '.join(sorted(_OPTION_KEYS))}")
    dims, metrics = definition.get("dimensions", []), definition["metrics"]
    has_date = any(d == "date" or d.startswith("date:") for d in dims)
    rules = {
        "line": (has_date, "a line chart needs a date dimension"),
        "area": (has_date, "an area chart needs a date dimension"),
        "bar": (len(dims) >= 1, "a bar chart needs at least one dimension"),
        "pie": (len(dims) == 1 and len(metrics) == 1,
                "a pie chart needs exactly one dimension and one metric"),
        "kpi": (not dims, "a kpi shows totals: it takes no dimensions"),
        "scatter": (len(metrics) >= 2, "a scatter chart needs two metrics"),
        "table": (True, ""),
    }
    ok, message = rules[chart_type]
    if not ok:
        raise ValidationError(message)


def create_visualization(saved_query: SavedQuery, name: str, chart_type: str,
                         options: dict | None = None,
                         now: dt.datetime | None = None) -> Visualization:
    """Create a chart over a saved query, checking the type fits the query's shape."""
    options = options or {}
    _check_chart(chart_type, options, saved_query.definition)
    return Visualization.create(saved_query=saved_query, name=name, chart_type=chart_type,
                                options=options, **_stamps(now))


# -- dashboards -----------------------------------------------------------------------------


def create_dashboard(owner: User, name: str, description: str = "",
                     now: dt.datetime | None = None) -> Dashboard:
    """Create an empty dashboard on the 12-column grid; ConflictError for a taken name."""
    with conflict_on("dashboards_owner_id_name",
                     "you already have a dashboard with that name"), database.atomic():
        return Dashboard.create(owner=owner, name=name, description=description,
                                layout={"columns": GRID_COLUMNS}, **_stamps(now))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _place(dashboard_id: int, box: tuple[int, int, int, int], ignore: int | None = None):
    x, y, w, h = box
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > GRID_COLUMNS:
        raise ValidationError(f"a widget must fit the {GRID_COLUMNS}-column grid "
                              "(x >= 0, y >= 0, width and height >= 1, x + width <= 12)")
    lock = Dashboard.select(Dashboard.id).where(Dashboard.id == dashboard_id)
    if bound().lock_rows(lock).first() is None:
        raise NotFoundError("no such dashboard")
    others = DashboardWidget.select().where(DashboardWidget.dashboard == dashboard_id)
    for other in others:
        if other.id != ignore and _overlaps(box, (other.x, other.y, other.width, other.height)):
            raise ConflictError(f"the widget would overlap widget {other.id}")


def add_widget(dashboard: Dashboard, visualization: Visualization, x: int, y: int,
               width: int, height: int) -> DashboardWidget:
    """Place a visualization on a dashboard where it overlaps no other widget."""
    with write_transaction():
        _place(dashboard.id, (x, y, width, height))
        return DashboardWidget.create(dashboard=dashboard, visualization=visualization,
                                      x=x, y=y, width=width, height=height)


def move_widget(widget: DashboardWidget, x: int, y: int, width: int | None = None,
                height: int | None = None) -> DashboardWidget:
    """Move (and optionally resize) a widget; refused if it would overlap another."""
    width = widget.width if width is None else width
    height = widget.height if height is None else height
    with write_transaction():
        _place(widget.dashboard_id, (x, y, width, height), ignore=widget.id)
        DashboardWidget.update(x=x, y=y, width=width, height=height).where(
            DashboardWidget.id == widget.id).execute()
    widget.x, widget.y, widget.width, widget.height = x, y, width, height
    return widget


def remove_widget(widget: DashboardWidget) -> None:
    DashboardWidget.delete().where(DashboardWidget.id == widget.id).execute()


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
                    recipients: list[str] = (), now: dt.datetime | None = None,
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


def _write(rows: list[dict], fmt: str, handle) -> None:
    if fmt == "jsonl":
        for row in rows:
            handle.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")
        return
    columns = list(rows[0]) if rows else []
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: jsonable(v) for k, v in row.items()})


def export_report(report: Report, fmt: str, directory: str | os.PathLike,
                  requested_by: User | None = None, params: dict | None = None) -> ReportExport:
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
        if report.saved_query_id is None:
            raise ValidationError("the report has no saved query to export")
        rows = run_saved_query(report.saved_query, {**report.parameters, **(params or {})},
                               owner=requested_by)
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

_RESOURCES = {Dashboard: "dashboard", Report: "report", SavedQuery: "saved_query",
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
    link = ShareLink.create(resource_type=kind, resource_id=str(resource._pk),
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
