"""Analytics services: saved queries, visualizations, dashboards, reports, schedules,
exports and share links. The saved-query compiler lives in ``analytics.compiler``.
"""

from within_db.services.analytics.boards import (
    RUN_ANY,
    add_widget,
    create_dashboard,
    create_saved_query,
    create_visualization,
    move_widget,
    remove_widget,
    run_saved_query,
)
from within_db.services.analytics.compiler import catalogue
from within_db.services.analytics.reports import (
    SHARE_PREFIX,
    STALE_EXPORT_AFTER,
    create_report,
    create_report_template,
    create_schedule,
    create_share_link,
    due_schedules,
    export_report,
    mark_ran,
    next_run,
    reap_stale_exports,
    resolve_share_link,
    revoke_share_link,
)

__all__ = [
    "RUN_ANY",
    "SHARE_PREFIX",
    "STALE_EXPORT_AFTER",
    "add_widget",
    "catalogue",
    "create_dashboard",
    "create_report",
    "create_report_template",
    "create_saved_query",
    "create_schedule",
    "create_share_link",
    "create_visualization",
    "due_schedules",
    "export_report",
    "mark_ran",
    "move_widget",
    "next_run",
    "reap_stale_exports",
    "remove_widget",
    "resolve_share_link",
    "revoke_share_link",
    "run_saved_query",
]
