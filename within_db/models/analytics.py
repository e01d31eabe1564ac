"""Analytics domain: report templates and reports, saved queries, visualizations, schedules,
dashboards and widgets, exports and share links.

Saved-query definitions are structured JSON checked by ``services.analytics``, never SQL.
"""

import uuid

from within_db.base import BaseModel, TimestampedModel, check, choices, one_of
from within_db.fields import (
    BigIntegerField,
    BooleanField,
    CharField,
    ForeignKeyField,
    IntegerField,
    JSONField,
    TextField,
    UTCDateTimeField,
    utcnow,
)
from within_db.models.users import User

__all__ = [
    "CHART_TYPES", "Dashboard", "DashboardWidget", "EXPORT_FORMATS", "EXPORT_STATUSES",
    "GRID_COLUMNS", "Report", "ReportExport", "ReportTemplate", "SHARE_PERMISSIONS",
    "SHARE_RESOURCES", "SavedQuery", "ScheduledReport", "ShareLink", "Visualization",
]

CHART_TYPES = ("line", "bar", "area", "table", "kpi", "pie", "scatter")
EXPORT_FORMATS = ("csv", "jsonl")
EXPORT_STATUSES = ("pending", "running", "succeeded", "failed")
SHARE_PERMISSIONS = ("view", "edit")
SHARE_RESOURCES = ("dashboard", "report", "saved_query", "visualization")
GRID_COLUMNS = 12


class ReportTemplate(TimestampedModel):
    """A reusable report layout with default parameters; unique by name."""

    name = CharField(max_length=200, unique=True)
    description = TextField(default="")
    parameters = JSONField(default=dict)
    created_by = ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")

    class Meta:
        table_name = "report_templates"


class SavedQuery(TimestampedModel):
    """A structured query definition owned by a user; (owner, name) unique."""

    owner = ForeignKeyField(User, on_delete="CASCADE", backref="saved_queries", index=False)
    owner_id: uuid.UUID  # peewee's id accessor, declared for type checkers
    name = CharField(max_length=200)
    description = TextField(default="")
    definition = JSONField()

    class Meta:
        table_name = "saved_queries"
        indexes = ((("owner", "name"), True),)


class Report(TimestampedModel):
    """A report instance: a template and a saved query with its parameters."""

    template = ForeignKeyField(ReportTemplate, null=True, on_delete="SET NULL",
                               backref="reports")
    owner = ForeignKeyField(User, on_delete="CASCADE", backref="reports")
    saved_query = ForeignKeyField(SavedQuery, null=True, on_delete="SET NULL",
                                  backref="reports")
    saved_query_id: int | None  # peewee's id accessor, declared for type checkers
    name = CharField(max_length=200)
    parameters = JSONField(default=dict)

    class Meta:
        table_name = "reports"


class Visualization(TimestampedModel):
    """A chart over a saved query; deleted with the query."""

    saved_query = ForeignKeyField(SavedQuery, on_delete="CASCADE", backref="visualizations")
    saved_query_id: int  # peewee's id accessor, declared for type checkers
    name = CharField(max_length=200)
    chart_type = CharField(max_length=16, choices=choices(CHART_TYPES))
    options = JSONField(default=dict)

    class Meta:
        table_name = "visualizations"
        constraints = [check("visualizations", "chart_type", one_of("chart_type", CHART_TYPES))]


class ScheduledReport(TimestampedModel):
    """A cron schedule (in an IANA timezone) that runs a report; ``next_run_at`` is UTC."""

    report = ForeignKeyField(Report, on_delete="CASCADE", backref="schedules")
    cron_expression = CharField(max_length=100)
    timezone = CharField(max_length=64, default="UTC")
    recipients = JSONField(default=list)
    is_active = BooleanField(default=True)
    next_run_at = UTCDateTimeField(null=True)
    last_run_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "scheduled_reports"


ScheduledReport.add_index(
    ScheduledReport.index(ScheduledReport.next_run_at, name="scheduled_reports_due")
    .where(ScheduledReport.is_active)
)


class Dashboard(TimestampedModel):
    """A user's dashboard; (owner, name) unique."""

    owner = ForeignKeyField(User, on_delete="CASCADE", backref="dashboards", index=False)
    owner_id: uuid.UUID  # peewee's id accessor, declared for type checkers
    name = CharField(max_length=200)
    description = TextField(default="")
    layout = JSONField(default=dict)

    class Meta:
        table_name = "dashboards"
        indexes = ((("owner", "name"), True),)


class DashboardWidget(BaseModel):
    """A visualization placed on a dashboard's 12-column grid.

    The database keeps each box inside the grid; non-overlap is checked by the service.
    """

    dashboard = ForeignKeyField(Dashboard, on_delete="CASCADE", backref="widgets")
    dashboard_id: int  # peewee's id accessor, declared for type checkers
    visualization = ForeignKeyField(Visualization, on_delete="CASCADE", backref="widgets")
    x = IntegerField()
    y = IntegerField()
    width = IntegerField()
    height = IntegerField()

    class Meta:
        table_name = "dashboard_widgets"
        constraints = [
            check("dashboard_widgets", "in_grid",
                  f"x >= 0 AND y >= 0 AND width >= 1 AND height >= 1 "
                  f"AND x + width <= {GRID_COLUMNS}"),
        ]


class ReportExport(BaseModel):
    """One export of a report to a file, with its outcome."""

    report = ForeignKeyField(Report, on_delete="CASCADE", backref="exports")
    format = CharField(max_length=8, choices=choices(EXPORT_FORMATS))
    status = CharField(max_length=16, default="pending", choices=choices(EXPORT_STATUSES))
    location = CharField(max_length=1024, null=True)
    row_count = BigIntegerField(null=True)
    error = TextField(null=True)
    requested_by = ForeignKeyField(User, null=True, on_delete="SET NULL", backref="+")
    created_at = UTCDateTimeField(default=utcnow)
    started_at = UTCDateTimeField(null=True)
    finished_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "report_exports"
        constraints = [
            check("report_exports", "format", one_of("format", EXPORT_FORMATS)),
            check("report_exports", "status", one_of("status", EXPORT_STATUSES)),
            check("report_exports", "row_count_non_negative",
                  "row_count IS NULL OR row_count >= 0"),
        ]


class ShareLink(BaseModel):
    """A revocable, expiring link to a resource; only the token's SHA-256 is stored."""

    resource_type = CharField(max_length=32, choices=choices(SHARE_RESOURCES))
    resource_id = CharField(max_length=64)
    token_hash = CharField(max_length=64, unique=True)
    prefix = CharField(max_length=16)
    permission = CharField(max_length=8, default="view", choices=choices(SHARE_PERMISSIONS))
    created_by = ForeignKeyField(User, on_delete="CASCADE", backref="share_links")
    created_at = UTCDateTimeField(default=utcnow)
    expires_at = UTCDateTimeField()
    revoked_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "share_links"
        private_fields = ("token_hash",)
        indexes = ((("resource_type", "resource_id"), False),)
        constraints = [
            check("share_links", "resource_type", one_of("resource_type", SHARE_RESOURCES)),
            check("share_links", "permission", one_of("permission", SHARE_PERMISSIONS)),
            check("share_links", "hash_length", "length(token_hash) = 64"),
            check("share_links", "expiry_after_creation", "expires_at > created_at"),
        ]
