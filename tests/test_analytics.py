import datetime as dt
import json
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from within_db.errors import ConflictError, PermissionDeniedError, ValidationError
from within_db.models.analytics import DashboardWidget, ReportExport, ScheduledReport
from within_db.models.campaigns import AdMetric, CampaignPerformance, SpendRecord
from within_db.models.ml_system import ModelMetric, PredictionLog
from within_db.services import analytics as svc
from within_db.services.analytics.compiler import catalogue, execute_definition, validate_definition
from within_db.services.users import create_role, grant_role

from .helpers import make_ad, make_campaign, make_model, make_report, make_user, make_version

UTC = dt.UTC
D = dt.date


@pytest.fixture
def data(db):
    """Two campaigns on two platforms over three days (a Sunday, Monday, and 1 Feb)."""
    owner = make_user()
    meta = make_campaign(owner=owner, platform="meta", start_date=D(2026, 1, 1))
    google = make_campaign(owner=owner, platform="google", start_date=D(2026, 1, 1))
    figures = [  # campaign, date, impressions, clicks, conversions, spend, revenue
        (meta, D(2026, 1, 25), 1000, 50, 5, "10.50", "40"),
        (meta, D(2026, 1, 26), 2000, 40, 0, "8.25", "0"),
        (google, D(2026, 1, 26), 0, 0, 0, "0", "0"),
        (google, D(2026, 2, 1), 500, 10, 2, "3.000001", "9"),
    ]
    for c, day, imp, clk, conv, spend, rev in figures:
        CampaignPerformance.create(campaign=c, date=day, impressions=imp, clicks=clk,
                                   conversions=conv, spend_micros=Decimal(spend),
                                   revenue_micros=Decimal(rev))
        SpendRecord.create(campaign=c, amount_micros=Decimal(spend),
                           occurred_at=dt.datetime.combine(day, dt.time(23, 30), UTC))
    ad = make_ad(meta, creative_type="video")
    AdMetric.create(ad=ad, date=D(2026, 1, 25), impressions=10, clicks=0, conversions=0)
    version = make_version(make_model(name="ctr"))
    for i, score in enumerate([0.2, 0.4, 0.9]):
        PredictionLog.create(model_version=version, request_id=f"r{i}", score=score,
                             created_at=dt.datetime(2026, 1, 25, 23, 59, tzinfo=UTC)
                             + dt.timedelta(minutes=i))
    ModelMetric.create(model_version=version, name="auc", value=0.8, split="test")
    ModelMetric.create(model_version=version, name="auc", value=0.6, split="test")
    return {"owner": owner, "meta": meta, "google": google, "ad": ad, "version": version}


def test_totals_and_derived_metrics(data):
    rows = execute_definition({"dataset": "campaign_performance", "metrics": [
        "impressions", "clicks", "conversions", "spend", "revenue", "ctr", "cvr", "cpa", "roas"]})
    assert rows == [{"impressions": 3500, "clicks": 100, "conversions": 7,
                     "spend": Decimal("21.750001"), "revenue": Decimal("49"),
                     "ctr": round(100 / 3500, 9), "cvr": 0.07,
                     "cpa": round(21.750001 / 7, 9), "roas": round(49 / 21.750001, 9)}]


def test_grouping_by_day_week_month_platform_and_campaign(data):
    def run(dims, metrics=("clicks",), **kw):
        return execute_definition({"dataset": "campaign_performance", "dimensions": list(dims),
                                   "metrics": list(metrics), **kw})

    assert run(["date"]) == [{"date": D(2026, 1, 25), "clicks": 50},
                             {"date": D(2026, 1, 26), "clicks": 40},
                             {"date": D(2026, 2, 1), "clicks": 10}]
    # ISO weeks start on Monday: 25 Jan 2026 is a Sunday, 1 Feb too
    assert run(["date:week"]) == [{"date:week": D(2026, 1, 19), "clicks": 50},
                                  {"date:week": D(2026, 1, 26), "clicks": 50}]
    assert run(["date:month"]) == [{"date:month": D(2026, 1, 1), "clicks": 90},
                                   {"date:month": D(2026, 2, 1), "clicks": 10}]
    assert run(["platform"], ["clicks", "ctr"], sort=[{"by": "clicks", "desc": True}]) == [
        {"platform": "meta", "clicks": 90, "ctr": 0.03},
        {"platform": "google", "clicks": 10, "ctr": 0.02}]
    by_campaign = run(["campaign"], ["spend"])
    assert {r["campaign"]: r["spend"] for r in by_campaign} == {
        data["meta"].id: Decimal("18.75"), data["google"].id: Decimal("3.000001")}


def test_divide_by_zero_gives_null(data):
    rows = execute_definition({
        "dataset": "campaign_performance", "dimensions": ["date", "platform"],
        "metrics": ["ctr", "cvr", "cpa", "roas"],
        "filters": [{"dimension": "platform", "op": "eq", "value": "google"},
                    {"dimension": "date", "op": "eq", "value": "2026-01-26"}]})
    assert rows == [{"date": D(2026, 1, 26), "platform": "google", "ctr": None, "cvr": None,
                     "cpa": None, "roas": None}]


def test_filters_and_params(data):
    definition = {"dataset": "campaign_performance", "metrics": ["clicks"],
                  "filters": [{"dimension": "date", "op": "between",
                               "value": [{"param": "from"}, {"param": "to"}]},
                              {"dimension": "platform", "op": "in",
                               "value": ["meta", "google"]}]}
    rows = execute_definition(definition, {"from": "2026-01-26", "to": "2026-02-01"})
    assert rows == [{"clicks": 50}]
    with pytest.raises(ValidationError, match='missing query parameter "from"'):
        execute_definition(definition)
    gte = execute_definition({"dataset": "campaign_performance", "metrics": ["clicks"],
                              "filters": [{"dimension": "date", "op": "gte",
                                           "value": "2026-01-26"}]})
    assert gte == [{"clicks": 50}]


def test_spend_dataset_on_instants(data):
    rows = execute_definition({"dataset": "spend", "dimensions": ["date"],
                               "metrics": ["spend", "records"],
                               "filters": [{"dimension": "date", "op": "lte",
                                            "value": "2026-01-26"}]})
    assert rows == [{"date": D(2026, 1, 25), "spend": Decimal("10.5"), "records": 1},
                    {"date": D(2026, 1, 26), "spend": Decimal("8.25"), "records": 2}]


def test_ad_prediction_and_model_metric_datasets(data):
    assert execute_definition({"dataset": "ad_metrics", "dimensions": ["creative_type"],
                               "metrics": ["impressions", "ctr"]}) == [
        {"creative_type": "video", "impressions": 10, "ctr": 0.0}]
    assert execute_definition({"dataset": "prediction_logs", "dimensions": ["date", "model"],
                               "metrics": ["prediction_count", "mean_score"]}) == [
        {"date": D(2026, 1, 25), "model": "ctr", "prediction_count": 1, "mean_score": 0.2},
        {"date": D(2026, 1, 26), "model": "ctr", "prediction_count": 2, "mean_score": 0.65}]
    assert execute_definition({"dataset": "model_metrics", "dimensions": ["metric", "split"],
                               "metrics": ["mean_value", "max_value", "count"]}) == [
        {"metric": "auc", "split": "test", "mean_value": 0.7, "max_value": 0.8, "count": 2}]


def test_every_dimension_and_metric_runs(data):
    for dataset, valid in catalogue().items():
        for dim in [None, *valid["dimensions"]]:
            rows = execute_definition({"dataset": dataset, "dimensions": [dim] if dim else [],
                                       "metrics": valid["metrics"]})
            assert isinstance(rows, list)
            for row in rows:
                json.dumps({k: str(v) for k, v in row.items()})


@pytest.mark.parametrize("definition,message", [
    ({"dataset": "users", "metrics": ["clicks"]}, "unknown dataset"),
    ({"dataset": "spend", "metrics": ["clicks"]}, 'unknown metric "clicks"'),
    ({"dataset": "spend", "metrics": []}, "at least one metric"),
    ({"dataset": "spend", "dimensions": ["email"], "metrics": ["spend"]}, "unknown dimension"),
    ({"dataset": "spend", "dimensions": ["date:year"], "metrics": ["spend"]}, "date:month"),
    ({"dataset": "spend", "dimensions": ["date", "date:week"], "metrics": ["spend"]},
     "one date dimension"),
    ({"dataset": "spend", "metrics": ["spend"],
      "filters": [{"dimension": "platform", "op": "like", "value": "x"}]}, "unknown operator"),
    ({"dataset": "spend", "metrics": ["spend"],
      "filters": [{"dimension": "owner", "op": "eq", "value": "x"}]}, "cannot filter"),
    ({"dataset": "spend", "metrics": ["spend"], "sort": [{"by": "clicks"}]}, "sort entries"),
    ({"dataset": "spend", "metrics": ["spend"], "limit": 0}, "limit"),
    ({"dataset": "spend", "metrics": ["spend"], "sql": "DROP TABLE users"}, "unknown definition"),
    ("SELECT 1", "JSON object"),
])
def test_invalid_definitions_are_refused(definition, message):
    with pytest.raises(ValidationError, match=message):
        validate_definition(definition)


def test_saved_query_owner_and_permission_checks(data):
    owner = data["owner"]
    query = svc.create_saved_query(owner, "clicks", {"dataset": "campaign_performance",
                                                     "metrics": ["clicks"]})
    with pytest.raises(ConflictError):
        svc.create_saved_query(owner, "clicks", {"dataset": "spend", "metrics": ["spend"]})
    assert svc.run_saved_query(query, actor=owner) == [{"clicks": 100}]
    stranger = make_user()
    with pytest.raises(PermissionDeniedError, match="analytics.run_any"):
        svc.run_saved_query(query, actor=stranger)
    create_role("analyst", ["analytics.run_any"])
    grant_role(stranger, "analyst")
    assert svc.run_saved_query(query, actor=stranger) == [{"clicks": 100}]


def test_visualization_rules(data):
    q_date = svc.create_saved_query(data["owner"], "d", {
        "dataset": "campaign_performance", "dimensions": ["date"], "metrics": ["clicks"]})
    q_plat = svc.create_saved_query(data["owner"], "p", {
        "dataset": "campaign_performance", "dimensions": ["platform"], "metrics": ["clicks"]})
    assert svc.create_visualization(q_date, "trend", "line", {"title": "Clicks"}).id
    with pytest.raises(ValidationError, match="needs a date dimension"):
        svc.create_visualization(q_plat, "trend", "line")
    with pytest.raises(ValidationError, match="unknown chart type"):
        svc.create_visualization(q_plat, "x", "radar")
    with pytest.raises(ValidationError, match="unknown chart options"):
        svc.create_visualization(q_plat, "x", "bar", {"onclick": "alert(1)"})
    with pytest.raises(ValidationError, match="takes no dimensions"):
        svc.create_visualization(q_plat, "x", "kpi")
    assert svc.create_visualization(q_plat, "share", "pie").chart_type == "pie"


def test_dashboard_widgets_do_not_overlap(data):
    owner = data["owner"]
    query = svc.create_saved_query(owner, "p", {
        "dataset": "campaign_performance", "dimensions": ["platform"], "metrics": ["clicks"]})
    viz = svc.create_visualization(query, "bars", "bar")
    board = svc.create_dashboard(owner, "Main")
    with pytest.raises(ConflictError):
        svc.create_dashboard(owner, "Main")
    w1 = svc.add_widget(board, viz, 0, 0, 6, 4)
    w2 = svc.add_widget(board, viz, 6, 0, 6, 4)
    with pytest.raises(ConflictError, match="overlap"):
        svc.add_widget(board, viz, 3, 2, 4, 4)
    with pytest.raises(ValidationError, match="12-column grid"):
        svc.add_widget(board, viz, 10, 0, 4, 2)
    with pytest.raises(ConflictError):
        svc.move_widget(w2, 4, 0)
    svc.move_widget(w2, 0, 4, width=12)
    assert (DashboardWidget.get_by_id(w2.id).y, DashboardWidget.get_by_id(w2.id).width) == (4, 12)
    svc.remove_widget(w1)
    svc.add_widget(board, viz, 0, 0, 12, 4)
    viz.delete_instance()
    assert DashboardWidget.select().count() == 0


BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize("before,expected_local", [
    # spring forward: 29 March 2026, 02:00 -> 03:00
    (dt.datetime(2026, 3, 28, 10, 0, tzinfo=BERLIN), dt.datetime(2026, 3, 29, 9, 0)),
    # fall back: 25 October 2026, 03:00 -> 02:00
    (dt.datetime(2026, 10, 24, 10, 0, tzinfo=BERLIN), dt.datetime(2026, 10, 25, 9, 0)),
])
def test_daily_9am_berlin_across_dst(db, before, expected_local):
    report = make_report()
    schedule = svc.create_schedule(report, "0 9 * * *", "Europe/Berlin", now=before)
    stored = ScheduledReport.get_by_id(schedule.id).next_run_at
    assert stored.tzinfo == UTC
    assert stored.astimezone(BERLIN).replace(tzinfo=None) == expected_local
    offset_before = before.utcoffset()
    assert stored.astimezone(BERLIN).utcoffset() != offset_before  # the offset did change
    svc.mark_ran(schedule, stored)
    nxt = ScheduledReport.get_by_id(schedule.id).next_run_at
    assert nxt - stored == dt.timedelta(days=1)
    assert nxt.astimezone(BERLIN).hour == 9


def test_due_schedules_and_validation(db):
    report = make_report()
    now = dt.datetime(2026, 6, 1, 12, tzinfo=UTC)
    hourly = svc.create_schedule(report, "0 * * * *", "UTC", now=now)
    svc.create_schedule(report, "0 0 1 1 *", "UTC", now=now)
    paused = svc.create_schedule(report, "0 * * * *", "UTC", now=now, is_active=False)
    due = svc.due_schedules(now + dt.timedelta(hours=1))
    assert [s.id for s in due] == [hourly.id]
    assert paused.id not in [s.id for s in due]
    with pytest.raises(ValidationError, match="invalid cron"):
        svc.create_schedule(report, "61 * * * *", "UTC")
    with pytest.raises(ValidationError, match="unknown timezone"):
        svc.create_schedule(report, "0 9 * * *", "Mars/Olympus")
    with pytest.raises(ValidationError, match="naive"):
        svc.next_run("0 9 * * *", "UTC", dt.datetime(2026, 1, 1))


def test_exports_write_rows_or_fail_without_a_file(data, tmp_path):
    owner = data["owner"]
    query = svc.create_saved_query(owner, "by platform", {
        "dataset": "campaign_performance", "dimensions": ["platform"],
        "metrics": ["clicks", "spend"]})
    report = make_report(owner=owner, saved_query=query)
    export = svc.export_report(report, "csv", tmp_path)
    assert export.status == "succeeded" and export.row_count == 2
    lines = (tmp_path / export.location.split("/")[-1]).read_text().splitlines()
    assert lines == ["platform,clicks,spend", "google,10,3.000001", "meta,90,18.75"]
    jsonl = svc.export_report(report, "jsonl", tmp_path)
    first = json.loads(open(jsonl.location).readline())
    assert first == {"platform": "google", "clicks": 10, "spend": "3.000001"}
    broken = make_report(owner=owner, saved_query=None)
    failed = svc.export_report(broken, "csv", tmp_path / "out")
    assert failed.status == "failed" and "no saved query" in failed.error
    assert failed.location is None and not (tmp_path / "out").exists()
    denied = svc.export_report(report, "csv", tmp_path / "denied", requested_by=make_user())
    assert denied.status == "failed" and not (tmp_path / "denied").exists()
    assert ReportExport.select().count() == 4
    assert sorted(p.suffix for p in tmp_path.iterdir() if p.is_file()) == [".csv", ".jsonl"]
    with pytest.raises(ValidationError):
        svc.export_report(report, "xlsx", tmp_path)


def test_share_links_expire_and_revoke(data):
    owner = data["owner"]
    board = svc.create_dashboard(owner, "Shared")
    now = dt.datetime(2026, 6, 1, tzinfo=UTC)
    raw, link = svc.create_share_link(board, "view", dt.timedelta(hours=1), owner, now=now)
    assert raw.startswith("wdbl_") and link.token_hash != raw and raw not in str(link.to_dict())
    resource, permission = svc.resolve_share_link(raw, now=now + dt.timedelta(minutes=59))
    assert resource.id == board.id and permission == "view"
    assert svc.resolve_share_link(raw, now=now + dt.timedelta(hours=1)) is None
    assert svc.resolve_share_link(raw[:-1] + "x", now=now) is None
    raw2, _ = svc.create_share_link(board, "edit", dt.timedelta(days=1), owner)
    assert svc.revoke_share_link(raw2) is True
    assert svc.revoke_share_link(raw2) is False
    assert svc.resolve_share_link(raw2) is None
    with pytest.raises(ValidationError):
        svc.create_share_link(owner, "view", dt.timedelta(days=1), owner)
    with pytest.raises(ValidationError):
        svc.create_share_link(board, "admin", dt.timedelta(days=1), owner)
