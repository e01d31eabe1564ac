"""Seed analytics through its services: templates, saved queries that run, visualizations,
dashboards with non-overlapping widgets, reports, schedules, exports and share links."""

from __future__ import annotations

import datetime as dt
from typing import Any

from within_db.models.analytics import Report, ReportExport, ReportTemplate, SavedQuery
from within_db.models.users import User
from within_db.seed.common import REFERENCE, SeedContext
from within_db.services import analytics as svc

__all__ = ["QUERIES", "seed_analytics"]

# (name, definition, chart type)
QUERIES: list[tuple[str, dict[str, Any], str]] = [
    ("Weekly clicks by platform",
     {"dataset": "campaign_performance", "dimensions": ["date:week", "platform"],
      "metrics": ["impressions", "clicks", "ctr"], "sort": [{"by": "date:week"}]}, "line"),
    ("Spend and ROAS by platform",
     {"dataset": "campaign_performance", "dimensions": ["platform"],
      "metrics": ["spend", "revenue", "roas"], "sort": [{"by": "spend", "desc": True}]}, "bar"),
    ("Conversion funnel totals",
     {"dataset": "campaign_performance", "dimensions": [],
      "metrics": ["impressions", "clicks", "conversions", "cvr", "cpa"]}, "kpi"),
    ("Top ads by CTR",
     {"dataset": "ad_metrics", "dimensions": ["ad"], "metrics": ["clicks", "ctr"],
      "sort": [{"by": "ctr", "desc": True}], "limit": 20}, "table"),
    ("Monthly spend by source",
     {"dataset": "spend", "dimensions": ["date:month", "source"], "metrics": ["spend"]}, "area"),
    ("Daily predictions per model",
     {"dataset": "prediction_logs", "dimensions": ["date", "model"],
      "metrics": ["prediction_count", "mean_score"]}, "line"),
    ("Validation metrics by model",
     {"dataset": "model_metrics", "dimensions": ["model", "metric"],
      "metrics": ["mean_value"],
      "filters": [{"dimension": "split", "op": "eq", "value": "validation"}]}, "table"),
    ("Creative mix",
     {"dataset": "ad_metrics", "dimensions": ["creative_type"], "metrics": ["impressions"]},
     "pie"),
]
CRONS = [("0 9 * * 1", "Europe/Berlin"), ("30 7 * * *", "America/New_York"),
         ("0 6 1 * *", "UTC"), ("15 8 * * 1-5", "Asia/Tokyo")]


def seed_analytics(ctx: SeedContext, users: list[User]) -> None:
    rng, fake = ctx.rng, ctx.fake
    templates = []
    if not ctx.suffix:
        for name in ("Executive summary", "Channel performance", "Model health"):
            templates.append(svc.create_report_template(
                name, description=fake.sentence(), created_by=users[0],
                parameters={"period_days": rng.choice([7, 28, 90])}, now=REFERENCE))
    for i, owner in enumerate(users):
        picks = rng.sample(range(len(QUERIES)), ctx.scale.saved_queries_per_user)
        board = svc.create_dashboard(owner, f"{owner.full_name.split()[0]}'s overview",
                                     now=REFERENCE)
        x = y = 0
        for pick in picks:
            name, definition, chart = QUERIES[pick]
            query = svc.create_saved_query(owner, name, definition,
                                           description=fake.sentence(), now=REFERENCE)
            viz = svc.create_visualization(query, name, chart, {"title": name}, now=REFERENCE)
            width = 6
            if x + width > 12:
                x, y = 0, y + 4
            svc.add_widget(board, viz, x, y, width, 4)
            x += width
            report = _report(ctx, owner, query, templates, name)
            cron, zone = CRONS[(i + pick) % len(CRONS)]
            svc.create_schedule(report, cron, zone, recipients=[owner.email], now=REFERENCE)
            _export(ctx, report, owner, i)
        if i == 0 or rng.random() < 0.5:
            svc.create_share_link(board, rng.choice(["view", "edit"]), dt.timedelta(days=30),
                                  owner, now=REFERENCE)
        ctx.progress("analytics", 1)


def _report(ctx: SeedContext, owner: User, query: SavedQuery, templates: list[ReportTemplate],
            name: str) -> Report:
    return svc.create_report(owner, f"{name} report", saved_query=query,
                             template=ctx.rng.choice(templates) if templates else None,
                             now=REFERENCE)


def _export(ctx: SeedContext, report: Report, owner: User, i: int) -> None:
    """A past export record (no file is written by the seed)."""
    ok = ctx.rng.random() < 0.85
    started = REFERENCE - dt.timedelta(days=ctx.rng.randint(1, 20), hours=i % 24)
    fmt = ctx.rng.choice(["csv", "jsonl"])
    ReportExport.create(
        report=report, format=fmt, status="succeeded" if ok else "failed",
        location=f"exports/report-{report.id}.{fmt}" if ok else None,
        row_count=ctx.rng.randint(5, 500) if ok else None,
        error=None if ok else "export directory is not writable",
        requested_by=owner, created_at=started, started_at=started,
        finished_at=started + dt.timedelta(seconds=ctx.rng.randint(1, 90)))
