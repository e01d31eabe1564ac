"""Saved queries with access checks, visualizations and dashboards with a widget grid."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from within_db import boundary as check
from within_db.boundary import public_api
from within_db.db import bound, database, replica_read, write_transaction
from within_db.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from within_db.fields import utcnow
from within_db.integrity import conflict_on
from within_db.models.analytics import (
    CHART_TYPES,
    GRID_COLUMNS,
    Dashboard,
    DashboardWidget,
    SavedQuery,
    Visualization,
)
from within_db.models.users import User
from within_db.services.analytics.compiler import execute_definition
from within_db.services.analytics.definitions import MAX_IN, MAX_TEXT_VALUE, Definition, parse
from within_db.services.users import has_permission

__all__ = [
    "RUN_ANY", "add_widget", "create_dashboard", "create_saved_query", "create_visualization",
    "move_widget", "remove_widget", "run_saved_query",
]

RUN_ANY = "analytics.run_any"
_OPTION_KEYS = {"title", "subtitle", "color", "colors", "stacked", "y_axis", "x_axis",
                "legend", "format", "precision", "show_values", "sort"}


# -- saved queries --------------------------------------------------------------------------


def _stamps(now: dt.datetime | None) -> dict:
    now = check.optional_instant(now, "now") or utcnow()
    return {"created_at": now, "updated_at": now}


def _name(name: object, what: str) -> str:
    return check.text(name, f"{what} name", max_length=200)


def stored_definition(saved_query: SavedQuery) -> Definition:
    """The saved query's definition, checked again: ValidationError naming the query if it no
    longer validates (the catalogue or the schema changed since it was saved)."""
    try:
        return parse(saved_query.definition)
    except ValidationError as exc:
        raise ValidationError(f'saved query {saved_query.id} ("{saved_query.name[:80]}") no '
                              f"longer validates: {exc}; fix or re-create it") from None


def _param_value(value: object, name: str) -> Any:
    if value is None or isinstance(value, (bool, int, uuid.UUID, dt.date)):
        return value
    if isinstance(value, float):
        return check.number(value, name)
    return check.text(value, name, max_length=MAX_TEXT_VALUE, empty=True)


def query_params(params: object) -> dict[str, Any]:
    """Check run-time query parameters: text keys; text, numbers, booleans, dates, UUIDs or
    None, or lists of those. Their fit to each filter is checked when the query compiles."""
    if params is None:
        return {}
    if not isinstance(params, dict) or len(params) > 100:
        raise ValidationError("params must be a dict of at most 100 parameters")
    out = {}
    for key, value in params.items():
        check.text(key, "a parameter name", max_length=64)
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_IN:
                raise ValidationError(f"parameter lists hold at most {MAX_IN} values")
            out[key] = [_param_value(v, "a parameter value") for v in value]
        else:
            out[key] = _param_value(value, "a parameter value")
    return out


@public_api
def create_saved_query(owner: User, name: str, definition: dict, description: str = "",
                       now: dt.datetime | None = None) -> SavedQuery:
    """Store a definition that validates; ConflictError if the owner already has that name."""
    check.instance(owner, User, "owner")
    _name(name, "saved query")
    definition = check.json_object(definition, "definition")
    parse(definition)
    check.text(description, "description", empty=True, multiline=True)
    stamps = _stamps(now)
    with conflict_on("saved_queries_owner_id_name",
                     "you already have a saved query with that name"), database.atomic():
        return SavedQuery.create(owner=owner, name=name, definition=definition,
                                 description=description, **stamps)


@public_api
@replica_read
def run_saved_query(saved_query: SavedQuery, params: dict | None = None,
                    actor: User | None = None) -> list[dict[str, Any]]:
    """Run a saved query for ``actor`` (the acting user) and return its rows.

    Allowed for the query's owner or a holder of ``analytics.run_any``; ``actor=None`` is a
    trusted internal call on the query owner's behalf (exports, schedules). Reads the replica
    when one is configured and usable (see ``within_db.connect``). Params are typed against
    the filters' dimensions; a stored definition that no longer validates raises
    ValidationError naming the saved query.
    """
    check.instance(saved_query, SavedQuery, "saved_query")
    params = query_params(params)
    check.optional_instance(actor, User, "actor")
    if actor is not None and actor.id != saved_query.owner_id and \
            not has_permission(actor, RUN_ANY):
        raise PermissionDeniedError(f"running another user's query needs {RUN_ANY}")
    return execute_definition(stored_definition(saved_query), params)


# -- visualizations -------------------------------------------------------------------------


def _check_chart(chart_type: str, options: dict, definition: Definition) -> None:
    if not isinstance(chart_type, str) or chart_type not in CHART_TYPES:
        raise ValidationError(f"unknown chart type; valid: {', '.join(CHART_TYPES)}")
    unknown = set(options) - _OPTION_KEYS
    if unknown:
        raise ValidationError(f"unknown chart options: {', '.join(sorted(unknown))[:200]}; "
                              f"valid: {', '.join(sorted(_OPTION_KEYS))}")
    dims, metrics = definition.dimensions, definition.metrics
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


@public_api
def create_visualization(saved_query: SavedQuery, name: str, chart_type: str,
                         options: dict | None = None,
                         now: dt.datetime | None = None) -> Visualization:
    """Create a chart over a saved query, checking the type fits the query's shape."""
    check.instance(saved_query, SavedQuery, "saved_query")
    _name(name, "visualization")
    options = check.json_object(options, "options")
    _check_chart(chart_type, options, stored_definition(saved_query))
    stamps = _stamps(now)
    with database.atomic():
        return Visualization.create(saved_query=saved_query, name=name, chart_type=chart_type,
                                    options=options, **stamps)


# -- dashboards -----------------------------------------------------------------------------


@public_api
def create_dashboard(owner: User, name: str, description: str = "",
                     now: dt.datetime | None = None) -> Dashboard:
    """Create an empty dashboard on the 12-column grid; ConflictError for a taken name."""
    check.instance(owner, User, "owner")
    _name(name, "dashboard")
    check.text(description, "description", empty=True, multiline=True)
    stamps = _stamps(now)
    with conflict_on("dashboards_owner_id_name",
                     "you already have a dashboard with that name"), database.atomic():
        return Dashboard.create(owner=owner, name=name, description=description,
                                layout={"columns": GRID_COLUMNS}, **stamps)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _box(x: object, y: object, width: object, height: object) -> tuple[int, int, int, int]:
    return (check.integer(x, "x", low=0, high=GRID_COLUMNS - 1),
            check.integer(y, "y", low=0, high=2**31 - 1),
            check.integer(width, "width", low=1, high=GRID_COLUMNS),
            check.integer(height, "height", low=1, high=10_000))


def _place(dashboard_id: int, box: tuple[int, int, int, int], ignore: int | None = None) -> None:
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


@public_api
def add_widget(dashboard: Dashboard, visualization: Visualization, x: int, y: int,
               width: int, height: int) -> DashboardWidget:
    """Place a visualization on a dashboard where it overlaps no other widget.

    PermissionDeniedError when the visualization's query belongs to someone other than the
    dashboard's owner and that owner lacks ``analytics.run_any`` (the board would show it).
    """
    check.instance(dashboard, Dashboard, "dashboard")
    check.instance(visualization, Visualization, "visualization")
    _box(x, y, width, height)
    query_owner = (SavedQuery.select(SavedQuery.owner)
                   .where(SavedQuery.id == visualization.saved_query_id).scalar())
    if query_owner is not None and query_owner != dashboard.owner_id \
            and not has_permission(dashboard.owner, RUN_ANY):
        raise PermissionDeniedError(f"showing another user's query on a dashboard needs {RUN_ANY}")
    with write_transaction():
        _place(dashboard.id, (x, y, width, height))
        return DashboardWidget.create(dashboard=dashboard, visualization=visualization,
                                      x=x, y=y, width=width, height=height)


@public_api
def move_widget(widget: DashboardWidget, x: int, y: int, width: int | None = None,
                height: int | None = None) -> DashboardWidget:
    """Move (and optionally resize) a widget; refused if it would overlap another."""
    check.instance(widget, DashboardWidget, "widget")
    width = widget.width if width is None else width
    height = widget.height if height is None else height
    _box(x, y, width, height)
    with write_transaction():
        _place(widget.dashboard_id, (x, y, width, height), ignore=widget.id)
        DashboardWidget.update(x=x, y=y, width=width, height=height).where(
            DashboardWidget.id == widget.id).execute()
    widget.x, widget.y, widget.width, widget.height = x, y, width, height
    return widget


@public_api
def remove_widget(widget: DashboardWidget) -> None:
    """Take a widget off its dashboard."""
    check.instance(widget, DashboardWidget, "widget")
    DashboardWidget.delete().where(DashboardWidget.id == widget.id).execute()
