"""The saved-query compiler as a specification: every catalogue dataset, dimension and metric
answers a known figure computed by hand from a few seeded rows, on SQLite and PostgreSQL.

Filters are pinned at their edges (the first and last instant of a UTC day, both ends of a
``between``), limits at 1 and at the default cap, and refusals by their exact message.
"""

import datetime as dt
import math
import uuid
from decimal import Decimal

import pytest

from within_db import batch
from within_db.errors import ValidationError
from within_db.fields import DateField
from within_db.models.campaigns import AdMetric, CampaignPerformance, SpendRecord
from within_db.models.ml_system import ModelMetric, PredictionLog
from within_db.services.analytics import compiler
from within_db.services.analytics.catalogue import DATASETS, MAX_LIMIT, catalogue
from within_db.services.analytics.compiler import (
    compile_definition,
    execute_definition,
    validate_definition,
)
from within_db.services.analytics.definitions import MAX_IN, MAX_TEXT_VALUE

from .helpers import make_ad, make_campaign, make_model, make_user, make_version

UTC = dt.UTC
D = dt.date
JAN25, JAN26, JAN27, FEB1 = D(2026, 1, 25), D(2026, 1, 26), D(2026, 1, 27), D(2026, 2, 1)
LAST = dt.time(23, 59, 59, 999_999)  # the last instant of a UTC day


def at(day, time=dt.time(), tz=UTC):
    return dt.datetime.combine(day, time, tz)


@pytest.fixture
def world(db):
    """Two campaigns, three ads, spend on the edges of UTC days, two models' logs and metrics.

    Every figure the tests expect is computed by hand from these rows (see each test).
    """
    owner = make_user()
    cm = make_campaign(owner=owner, platform="meta", objective="sales", currency="USD")
    cg = make_campaign(owner=owner, platform="google", objective="leads", currency="EUR")
    # campaign, date, impressions, clicks, conversions, spend, revenue
    for c, day, imp, clk, conv, spend, rev in [
        (cm, JAN25, 1000, 50, 5, "10.5", "40"),
        (cm, JAN26, 2000, 40, 0, "8.25", "0"),
        (cg, JAN26, 400, 20, 4, "2", "6"),
        (cg, FEB1, 500, 10, 2, "3.000001", "9"),
    ]:
        CampaignPerformance.create(campaign=c, date=day, impressions=imp, clicks=clk,
                                   conversions=conv, spend_micros=Decimal(spend),
                                   revenue_micros=Decimal(rev))
    a1 = make_ad(cm, creative_type="video")
    a2 = make_ad(cm, creative_type="image")
    a3 = make_ad(cg, creative_type="image")
    for ad, day, imp, clk, conv, spend in [
        (a1, JAN25, 100, 10, 2, "5"),
        (a1, JAN26, 300, 30, 1, "7"),
        (a2, JAN25, 200, 4, 0, "1"),
        (a3, FEB1, 50, 5, 5, "2.5"),
    ]:
        AdMetric.create(ad=ad, date=day, impressions=imp, clicks=clk, conversions=conv,
                        spend_micros=Decimal(spend))
    # spend on the edges of UTC days; the last one is 26 Jan in UTC, 27 Jan in Berlin
    for c, when, amount, currency, source in [
        (cm, at(JAN25), "1", "USD", "platform_api"),
        (cm, at(JAN25, LAST), "2", "USD", "manual"),
        (cm, at(JAN26), "4", "USD", "adjustment"),
        (cg, at(JAN27), "8", "EUR", "import"),
        (cg, at(JAN27, dt.time(0, 30), dt.timezone(dt.timedelta(hours=1))), "16", "EUR",
         "manual"),
    ]:
        SpendRecord.create(campaign=c, occurred_at=when, amount_micros=Decimal(amount),
                           currency=currency, source=source)
    ctr, cvr = make_model(name="ctr"), make_model(name="cvr")
    v1, v2, w1 = make_version(ctr, 1), make_version(ctr, 2), make_version(cvr, 1)
    for i, (version, score, latency, when) in enumerate([
        (v1, 0.2, 10.0, at(JAN25, dt.time(10))),
        (v1, 0.4, 20.0, at(JAN25, LAST)),
        (v2, 0.9, None, at(JAN26)),
        (w1, 0.5, 7.0, at(JAN26, dt.time(12))),
    ]):
        PredictionLog.create(model_version=version, request_id=f"req-{i}", score=score,
                             latency_ms=latency, created_at=when)
    for version, name, value, split, when in [
        (v1, "auc", 0.8, "test", at(JAN25, dt.time(9))),
        (v1, "auc", 0.6, "test", at(JAN26, dt.time(9))),
        (v1, "loss", 0.3, "train", at(JAN26, dt.time(10))),
        (w1, "auc", 0.7, "validation", at(FEB1)),
    ]:
        ModelMetric.create(model_version=version, name=name, value=value, split=split,
                           recorded_at=when)
    return dict(cm=cm, cg=cg, a1=a1, a2=a2, a3=a3, v1=v1, v2=v2, w1=w1)


def run(dataset, dims=(), metrics=(), *filters, **kw):
    return execute_definition({"dataset": dataset, "dimensions": list(dims),
                               "metrics": list(metrics), "filters": list(filters), **kw})


def f(dimension, op, value):
    return {"dimension": dimension, "op": op, "value": value}


def by(rows, key):
    """Rows keyed by one dimension's value, that dimension left out."""
    return {row[key]: {k: v for k, v in row.items() if k != key} for row in rows}


def types(rows):
    return [{k: type(v) for k, v in row.items()} for row in rows]


# -- every dataset, dimension and metric, with figures computed by hand ----------------------


def test_campaign_performance_totals_and_ratios(world):
    rows = run("campaign_performance", [], ["impressions", "clicks", "conversions", "spend",
                                            "revenue", "ctr", "cvr", "cpa", "roas"])
    # 3900 impressions, 120 clicks, 11 conversions, 23.750001 spent, 55 earned
    assert rows == [{"impressions": 3900, "clicks": 120, "conversions": 11,
                     "spend": Decimal("23.750001"), "revenue": Decimal("55"),
                     "ctr": round(120 / 3900, 9), "cvr": round(11 / 120, 9),
                     "cpa": round(23.750001 / 11, 9), "roas": round(55 / 23.750001, 9)}]
    assert types(rows) == [{"impressions": int, "clicks": int, "conversions": int,
                            "spend": Decimal, "revenue": Decimal, "ctr": float, "cvr": float,
                            "cpa": float, "roas": float}]


def test_campaign_performance_by_each_dimension(world):
    metrics = ["impressions", "spend", "cvr", "roas"]
    meta = {"impressions": 3000, "spend": Decimal("18.75"), "cvr": round(5 / 90, 9),
            "roas": round(40 / 18.75, 9)}
    google = {"impressions": 900, "spend": Decimal("5.000001"), "cvr": 0.2,
              "roas": round(15 / 5.000001, 9)}
    rows = run("campaign_performance", ["campaign"], metrics)
    assert by(rows, "campaign") == {world["cm"].id: meta, world["cg"].id: google}
    assert {type(r["campaign"]) for r in rows} == {uuid.UUID}
    assert run("campaign_performance", ["platform"], metrics) == [
        {"platform": "google", **google}, {"platform": "meta", **meta}]
    assert run("campaign_performance", ["objective"], metrics) == [
        {"objective": "leads", **google}, {"objective": "sales", **meta}]
    assert run("campaign_performance", ["currency"], metrics) == [
        {"currency": "EUR", **google}, {"currency": "USD", **meta}]


def test_campaign_performance_by_day_week_and_month(world):
    def clicks(dim):
        return [(r[dim], r["clicks"]) for r in run("campaign_performance", [dim], ["clicks"])]

    assert clicks("date") == [(JAN25, 50), (JAN26, 60), (FEB1, 10)]
    assert clicks("date:day") == [(JAN25, 50), (JAN26, 60), (FEB1, 10)]
    # ISO weeks start on Monday: 25 Jan 2026 is a Sunday, 26 Jan a Monday, 1 Feb a Sunday
    assert clicks("date:week") == [(D(2026, 1, 19), 50), (JAN26, 70)]
    assert clicks("date:month") == [(D(2026, 1, 1), 110), (FEB1, 10)]
    rows = run("campaign_performance", ["date:week"], ["clicks"])
    assert {type(r["date:week"]) for r in rows} == {D}


def test_ad_metrics_every_dimension_and_metric(world):
    metrics = ["impressions", "clicks", "conversions", "spend", "ctr", "cvr", "cpa"]
    a1 = {"impressions": 400, "clicks": 40, "conversions": 3, "spend": Decimal("12"),
          "ctr": 0.1, "cvr": 0.075, "cpa": 4.0}
    a2 = {"impressions": 200, "clicks": 4, "conversions": 0, "spend": Decimal("1"),
          "ctr": 0.02, "cvr": 0.0, "cpa": None}  # no conversions: no cost per one
    a3 = {"impressions": 50, "clicks": 5, "conversions": 5, "spend": Decimal("2.5"),
          "ctr": 0.1, "cvr": 1.0, "cpa": 0.5}
    meta = {"impressions": 600, "clicks": 44, "conversions": 3, "spend": Decimal("13"),
            "ctr": round(44 / 600, 9), "cvr": round(3 / 44, 9), "cpa": round(13 / 3, 9)}
    rows = run("ad_metrics", ["ad"], metrics)
    assert by(rows, "ad") == {world["a1"].id: a1, world["a2"].id: a2, world["a3"].id: a3}
    assert {type(r["ad"]) for r in rows} == {uuid.UUID}
    rows = run("ad_metrics", ["campaign"], metrics)
    assert by(rows, "campaign") == {world["cm"].id: meta, world["cg"].id: a3}
    assert {type(r["campaign"]) for r in rows} == {uuid.UUID}
    assert run("ad_metrics", ["platform"], metrics) == [{"platform": "google", **a3},
                                                        {"platform": "meta", **meta}]
    assert run("ad_metrics", ["creative_type"], metrics) == [
        {"creative_type": "image", "impressions": 250, "clicks": 9, "conversions": 5,
         "spend": Decimal("3.5"), "ctr": 0.036, "cvr": round(5 / 9, 9), "cpa": 0.7},
        {"creative_type": "video", **a1}]
    assert run("ad_metrics", ["date"], ["clicks", "cpa"]) == [
        {"date": JAN25, "clicks": 14, "cpa": 3.0}, {"date": JAN26, "clicks": 30, "cpa": 7.0},
        {"date": FEB1, "clicks": 5, "cpa": 0.5}]


def test_spend_every_dimension_and_metric(world):
    rows = run("spend", ["campaign"], ["spend", "records"])
    assert by(rows, "campaign") == {world["cm"].id: {"spend": Decimal("7"), "records": 3},
                                    world["cg"].id: {"spend": Decimal("24"), "records": 2}}
    assert types(rows) == [{"campaign": uuid.UUID, "spend": Decimal, "records": int}] * 2
    assert run("spend", ["platform"], ["records", "spend"]) == [
        {"platform": "google", "records": 2, "spend": Decimal("24")},
        {"platform": "meta", "records": 3, "spend": Decimal("7")}]
    assert run("spend", ["source"], ["spend"]) == [
        {"source": "adjustment", "spend": Decimal("4")},
        {"source": "import", "spend": Decimal("8")},
        {"source": "manual", "spend": Decimal("18")},
        {"source": "platform_api", "spend": Decimal("1")}]
    assert run("spend", ["currency"], ["spend"]) == [{"currency": "EUR", "spend": Decimal("24")},
                                                     {"currency": "USD", "spend": Decimal("7")}]
    # instants group by their UTC day: 00:30 in Berlin on 27 Jan is 26 Jan
    assert run("spend", ["date"], ["spend", "records"]) == [
        {"date": JAN25, "spend": Decimal("3"), "records": 2},
        {"date": JAN26, "spend": Decimal("20"), "records": 2},
        {"date": JAN27, "spend": Decimal("8"), "records": 1}]


def test_prediction_logs_every_dimension_and_metric(world):
    metrics = ["prediction_count", "mean_score", "mean_latency_ms"]
    v1 = {"prediction_count": 2, "mean_score": 0.3, "mean_latency_ms": 15.0}
    v2 = {"prediction_count": 1, "mean_score": 0.9, "mean_latency_ms": None}
    w1 = {"prediction_count": 1, "mean_score": 0.5, "mean_latency_ms": 7.0}
    rows = run("prediction_logs", ["model_version"], metrics)
    assert rows == [{"model_version": world[k].id, **v} for k, v in
                    sorted([("v1", v1), ("v2", v2), ("w1", w1)], key=lambda kv: world[kv[0]].id)]
    assert {type(r["model_version"]) for r in rows} == {int}
    assert {type(r["prediction_count"]) for r in rows} == {int}
    # AVG leaves the NULL latency out
    assert run("prediction_logs", ["model"], metrics) == [
        {"model": "ctr", "prediction_count": 3, "mean_score": 0.5, "mean_latency_ms": 15.0},
        {"model": "cvr", **w1}]
    assert run("prediction_logs", ["version"], metrics) == [
        {"version": 1, "prediction_count": 3, "mean_score": round(1.1 / 3, 9),
         "mean_latency_ms": round(37 / 3, 9)},
        {"version": 2, **v2}]
    assert run("prediction_logs", ["date"], ["prediction_count"]) == [
        {"date": JAN25, "prediction_count": 2}, {"date": JAN26, "prediction_count": 2}]


def test_model_metrics_every_dimension_and_metric(world):
    metrics = ["mean_value", "min_value", "max_value", "count"]
    v1 = {"mean_value": round(1.7 / 3, 9), "min_value": 0.3, "max_value": 0.8, "count": 3}
    w1 = {"mean_value": 0.7, "min_value": 0.7, "max_value": 0.7, "count": 1}
    rows = run("model_metrics", ["model_version"], metrics)
    assert by(rows, "model_version") == {world["v1"].id: v1, world["w1"].id: w1}
    assert types(rows)[0] == {"model_version": int, "mean_value": float, "min_value": float,
                              "max_value": float, "count": int}
    assert run("model_metrics", ["model"], metrics) == [{"model": "ctr", **v1},
                                                        {"model": "cvr", **w1}]
    assert run("model_metrics", ["metric"], metrics) == [
        {"metric": "auc", "mean_value": 0.7, "min_value": 0.6, "max_value": 0.8, "count": 3},
        {"metric": "loss", "mean_value": 0.3, "min_value": 0.3, "max_value": 0.3, "count": 1}]
    assert run("model_metrics", ["split"], ["count", "max_value"]) == [
        {"split": "test", "count": 2, "max_value": 0.8},
        {"split": "train", "count": 1, "max_value": 0.3},
        {"split": "validation", "count": 1, "max_value": 0.7}]
    assert run("model_metrics", ["date:month"], ["count"]) == [
        {"date:month": D(2026, 1, 1), "count": 3}, {"date:month": FEB1, "count": 1}]


def test_the_tests_above_cover_the_whole_catalogue():
    assert catalogue() == {
        "campaign_performance": {
            "dimensions": ["date", "date:day", "date:week", "date:month", "campaign",
                           "platform", "objective", "currency"],
            "metrics": ["impressions", "clicks", "conversions", "spend", "revenue", "ctr",
                        "cvr", "cpa", "roas"]},
        "ad_metrics": {
            "dimensions": ["date", "date:day", "date:week", "date:month", "ad", "campaign",
                           "platform", "creative_type"],
            "metrics": ["impressions", "clicks", "conversions", "spend", "ctr", "cvr", "cpa"]},
        "spend": {"dimensions": ["date", "date:day", "date:week", "date:month", "campaign",
                                 "platform", "source", "currency"],
                  "metrics": ["spend", "records"]},
        "prediction_logs": {
            "dimensions": ["date", "date:day", "date:week", "date:month", "model_version",
                           "model", "version"],
            "metrics": ["prediction_count", "mean_score", "mean_latency_ms"]},
        "model_metrics": {
            "dimensions": ["date", "date:day", "date:week", "date:month", "model_version",
                           "model", "metric", "split"],
            "metrics": ["mean_value", "min_value", "max_value", "count"]},
    }


def test_no_matching_rows_give_zero_sums_and_no_ratios(world):
    nothing = f("date", "eq", "2020-01-01")
    assert run("campaign_performance", [], ["clicks", "spend", "ctr", "roas"], nothing) == [
        {"clicks": 0, "spend": Decimal(0), "ctr": None, "roas": None}]
    assert run("prediction_logs", [], ["prediction_count", "mean_score"], nothing) == [
        {"prediction_count": 0, "mean_score": None}]
    assert run("spend", ["platform"], ["spend"], nothing) == []


# -- filters at their edges ------------------------------------------------------------------


@pytest.mark.parametrize("op,value,expected", [
    ("eq", "2026-01-25", "3"),  # 00:00 and 23:59:59.999999, not 26 Jan 00:00
    ("eq", "2026-01-26", "20"),  # 00:00 UTC, and 00:30 in Berlin on 27 Jan
    ("gte", "2026-01-26", "28"),
    ("gte", "2026-01-28", "0"),
    ("lte", "2026-01-25", "3"),
    ("lte", "2026-01-24", "0"),
    ("between", ["2026-01-25", "2026-01-26"], "23"),
    ("between", ["2026-01-26", "2026-01-26"], "20"),
    ("between", ["2026-01-27", "2026-01-25"], "0"),
    ("in", ["2026-01-25", "2026-01-27"], "11"),
    ("in", ["2026-01-26"], "20"),
])
def test_date_filters_on_instants_use_whole_utc_days(world, op, value, expected):
    assert run("spend", [], ["spend"], f("date", op, value)) == [{"spend": Decimal(expected)}]


@pytest.mark.parametrize("op,value,expected", [
    ("eq", "2026-01-26", 60),
    ("gte", "2026-01-26", 70),
    ("lte", "2026-01-26", 110),
    ("lte", "2026-01-25", 50),
    ("between", ["2026-01-25", "2026-01-26"], 110),
    ("between", ["2026-01-26", "2026-02-01"], 70),
    ("in", ["2026-01-25", "2026-02-01"], 60),
    ("in", ["2026-01-27"], 0),
])
def test_date_filters_on_dates(world, op, value, expected):
    assert run("campaign_performance", [], ["clicks"], f("date", op, value)) == \
        [{"clicks": expected}]


@pytest.mark.parametrize("filter_,expected", [
    (f("platform", "eq", "meta"), {"meta"}),
    (f("platform", "in", ["google", "tiktok"]), {"google"}),
    (f("platform", "between", ["google", "meta"]), {"google", "meta"}),
    (f("platform", "between", ["h", "z"]), {"meta"}),
    (f("platform", "between", ["a", "google"]), {"google"}),
    (f("platform", "gte", "meta"), {"meta"}),
    (f("platform", "lte", "google"), {"google"}),
    (f("platform", "lte", "h"), {"google"}),
])
def test_text_dimension_filters(world, filter_, expected):
    rows = run("campaign_performance", ["platform"], ["clicks"], filter_)
    assert {r["platform"] for r in rows} == expected


@pytest.mark.parametrize("filter_,expected", [
    (f("version", "eq", 2), [2]),
    (f("version", "in", [1, 5]), [1]),
    (f("version", "between", [2, 3]), [2]),
    (f("version", "between", [0, 1]), [1]),
    (f("version", "gte", 2), [2]),
    (f("version", "lte", 1), [1]),
    (f("version", "lte", 0), []),
])
def test_integer_dimension_filters(world, filter_, expected):
    rows = run("prediction_logs", ["version"], ["prediction_count"], filter_)
    assert [r["version"] for r in rows] == expected


def test_uuid_dimension_filters_take_uuids_or_their_text(world):
    cm, cg = world["cm"].id, world["cg"].id
    assert run("spend", [], ["records"], f("campaign", "eq", str(cm))) == [{"records": 3}]
    assert run("spend", [], ["records"], f("campaign", "in", [str(cg)])) == [{"records": 2}]
    assert execute_definition({"dataset": "spend", "metrics": ["records"], "filters": [
        f("campaign", "eq", {"param": "c"})]}, {"c": cg}) == [{"records": 2}]


def test_filters_combine_with_and(world):
    assert run("spend", ["source"], ["spend"], f("platform", "eq", "google"),
               f("date", "eq", "2026-01-26")) == [{"source": "manual", "spend": Decimal(16)}]


# -- sort and limit --------------------------------------------------------------------------


def test_sort_by_metrics_and_dimensions_then_every_dimension(world):
    def sources(**kw):
        return [r["source"] for r in run("spend", ["source"], ["records"], **kw)]

    # manual has two records; the rest tie at one and follow in source order
    assert sources(sort=[{"by": "records", "desc": True}]) == [
        "manual", "adjustment", "import", "platform_api"]
    assert sources(sort=[{"by": "records"}]) == [
        "adjustment", "import", "platform_api", "manual"]
    assert sources(sort=[{"by": "source", "desc": True}]) == [
        "platform_api", "manual", "import", "adjustment"]
    assert sources(sort=[{"by": "records", "desc": False}, {"by": "source", "desc": True}]) \
        == ["platform_api", "import", "adjustment", "manual"]


def test_a_positive_limit_keeps_the_first_rows_in_order(world):
    def days(**kw):
        return [r["date"] for r in run("campaign_performance", ["date"], ["clicks"], **kw)]

    assert days(limit=1) == [JAN25]
    assert days(limit=2) == [JAN25, JAN26]
    assert days(limit=2, sort=[{"by": "clicks", "desc": True}]) == [JAN26, JAN25]
    assert days(limit=MAX_LIMIT) == [JAN25, JAN26, FEB1]


def test_results_stop_at_the_default_cap(db):
    campaign = make_campaign()
    first = D(1990, 1, 1)
    batch.bulk_insert(CampaignPerformance, (
        {"campaign": campaign.id, "date": first + dt.timedelta(days=i), "clicks": 0}
        for i in range(MAX_LIMIT + 1)))
    rows = run("campaign_performance", ["date"], ["clicks"])
    assert len(rows) == MAX_LIMIT == 10_000
    assert rows[-1]["date"] == first + dt.timedelta(days=MAX_LIMIT - 1)
    assert len(run("campaign_performance", ["date"], ["clicks"], limit=MAX_LIMIT)) == MAX_LIMIT


# -- compile_definition's own arguments ------------------------------------------------------


def test_compile_definition_takes_a_definition_object_and_a_database(world, db):
    from within_db.services.analytics.definitions import parse

    definition = parse({"dataset": "campaign_performance", "dimensions": ["date:month"],
                        "metrics": ["clicks", "spend", "ctr"]})
    query, converters = compile_definition(definition, db=db)
    assert set(converters) == {"date:month", "clicks", "spend", "ctr"}
    assert [row["clicks"] for row in query] == [110, 10]
    assert execute_definition(definition) == [
        {"date:month": D(2026, 1, 1), "clicks": 110, "spend": Decimal("20.75"),
         "ctr": round(110 / 3400, 9)},
        {"date:month": FEB1, "clicks": 10, "spend": Decimal("3.000001"), "ctr": 0.02}]
    with pytest.raises(ValidationError) as info:
        compile_definition(definition, db="sqlite:///x.db")
    assert str(info.value) == "db must be a peewee database"
    as_dict = {"dataset": "spend", "dimensions": ["date"], "metrics": ["records"]}
    query, converters = compile_definition(as_dict)
    assert [(converters["date"](r["date"]), r["records"]) for r in query] == [
        (JAN25, 2), (JAN26, 2), (JAN27, 1)]
    with pytest.raises(ValidationError, match="^a query definition must be a JSON object$"):
        compile_definition(["spend"])


def test_a_compiled_query_runs_on_the_database_it_was_compiled_for(world, migrated_url):
    """Another connection sees none of this test's uncommitted rows."""
    from within_db.db import make_database

    other = make_database(migrated_url)
    try:
        definition = {"dataset": "spend", "dimensions": ["date:month"], "metrics": ["records"]}
        query, _ = compile_definition(definition, db=other)
        assert list(query) == []
        assert [r["records"] for r in compile_definition(definition)[0]] == [5]
    finally:
        other.close()


def test_converters_make_python_values_from_driver_values():
    assert compiler._to_date("2026-01-26") == JAN26
    assert compiler._float(None) is None
    assert compiler._money(3_000_001) == Decimal("3.000001")
    assert compiler._money(Decimal(5)) == Decimal("0.000005")
    assert compiler._float(3) == 3 and type(compiler._float(3)) is int
    assert compiler._float(Decimal("0.1234567894")) == 0.123456789
    assert compiler._float(2 / 3) == 0.666666667


# -- refusals --------------------------------------------------------------------------------


def _refused(definition, params=None):
    with pytest.raises(ValidationError) as info:
        execute_definition(definition, params)
    return str(info.value)


SPEND = {"dataset": "spend", "metrics": ["spend"]}


def test_unknown_names_are_refused_with_the_valid_ones(world):
    assert _refused({"dataset": "users", "metrics": ["x"]}) == (
        'unknown dataset "users"; valid datasets: campaign_performance, ad_metrics, spend, '
        "prediction_logs, model_metrics")
    assert _refused({**SPEND, "metrics": ["clicks"]}) == (
        'unknown metric "clicks" for spend; valid: spend, records')
    assert _refused({**SPEND, "dimensions": ["ad"]}) == (
        'unknown dimension "ad" for spend; valid: date, date:day, date:week, date:month, '
        "campaign, platform, source, currency")
    assert _refused({**SPEND, "dimensions": ["date:year"]}).startswith(
        'unknown dimension "date:year" for spend; valid: date, date:day,')
    assert _refused({**SPEND, "filters": [f("date:week", "eq", "x")]}) == (
        'cannot filter on "date:week"; valid: date, campaign, platform, source, currency')
    assert _refused({**SPEND, "filters": [f("source", "ne", "x")]}) == (
        "filters.0.op: unknown operator; valid: eq, in, between, gte, lte")
    assert _refused({**SPEND, "metrics": []}) == "a query needs at least one metric"
    assert _refused({**SPEND, "dimensions": ["date:week", "date"]}) == (
        "at most one date dimension per query")
    assert _refused({**SPEND, "dimensions": ["source", "source"]}) == (
        "dimensions and metrics must not repeat")
    assert _refused({**SPEND, "sort": [{"by": "records"}]}) == (
        'sort entries are {"by": <a selected dimension or metric>, "desc": bool}')
    assert _refused({**SPEND, "bogus": 1, "Also": 2}) == (
        "unknown definition keys: Also, bogus; valid: dataset, dimensions, metrics, filters, "
        "sort, limit")
    assert _refused("spend") == "a query definition must be a JSON object"


def test_one_date_dimension_and_each_grain_is_accepted(world):
    for dim in ["date", "date:day", "date:week", "date:month"]:
        assert validate_definition({**SPEND, "dimensions": [dim, "source"]})


@pytest.mark.parametrize("limit,ok", [(0, False), (1, True), (MAX_LIMIT, True),
                                      (MAX_LIMIT + 1, False), (-1, False)])
def test_limit_bounds(limit, ok):
    definition = {**SPEND, "limit": limit}
    if ok:
        assert validate_definition(definition) is definition
    else:
        with pytest.raises(ValidationError, match="^limit must be an integer from 1 to 10000$"):
            validate_definition(definition)


@pytest.mark.parametrize("filter_,message", [
    (f("source", "eq", 3), 'filter 0 ("source" eq): expected a str of at most 16 characters, '
                           "got int"),
    (f("source", "eq", "x" * 17), "expected a str of at most 16 characters, got 17"),
    (f("source", "eq", "\ud800"), "expected text without lone surrogates"),
    (f("source", "eq", "a\x00b"), "a text filter value is at most 1024 characters, without NUL"),
    (f("source", "eq", "x" * (MAX_TEXT_VALUE + 1)), "a text filter value is at most 1024"),
    (f("campaign", "eq", "not-a-uuid"), "expected a UUID or canonical UUID text, got str"),
    (f("campaign", "eq", 7), "expected a UUID or canonical UUID text, got int"),
    (f("campaign", "eq", "0" * 32), "expected a UUID or canonical UUID text"),
    (f("date", "eq", 20260126), 'filter 0 ("date" eq): expected a date or YYYY-MM-DD text'),
    (f("date", "between", ["2026-01-01", "26/01/2026"]), 'filter 0 ("date" between): expected'),
    (f("date", "eq", "2026-02-30"), "expected a date or YYYY-MM-DD text"),
    (f("source", "in", ["a", 1.5]), 'filter 0 ("source" in): expected a str'),
    (f("source", "eq", float("nan")), "filters.0.value: a number filter value must be finite"),
    (f("source", "eq", float("inf")), "filters.0.value: a number filter value must be finite"),
    (f("source", "in", ["a", -math.inf]),
     "filters.0.value: a number filter value must be finite"),
    (f("source", "eq", None), "a filter value is text, a number, true/false"),
    (f("source", "eq", {"a": 1}), "a filter value is text, a number, true/false"),
    (f("source", "eq", ["a"]), '"eq" takes one value, not a list'),
    (f("source", "gte", ["a"]), '"gte" takes one value, not a list'),
    (f("source", "in", "a"), "needs a list"),
    (f("source", "between", "a"), "needs a list"),
    (f("source", "in", []), '"in" needs 1 to 1000 values'),
    (f("source", "between", ["a"]), '"between" needs a [from, to] pair'),
    (f("source", "between", ["a", "b", "c"]), '"between" needs a [from, to] pair'),
    (f("source", "in", ["a"] * (MAX_IN + 1)), "a filter takes at most 1000 values"),
    (f("source", "eq", {"param": "1x"}), "a parameter name is a letter or _"),
    (f("source", "eq", {"param": "x" * 65}), "a parameter name is a letter or _"),
    (f("source", "eq", {"param": 5}), "a parameter name is a letter or _"),
    (f("source", "eq", {"param": "x", "y": 1}), "a filter value is text, a number"),
])
def test_values_that_do_not_fit_their_dimension_are_refused(world, filter_, message):
    refusal = _refused({**SPEND, "filters": [filter_]})
    assert message in refusal
    if message.startswith("filters."):  # the definition's own messages, whole
        assert refusal == message


@pytest.mark.parametrize("dimension,value", [
    ("version", True), ("version", "1"), ("version", 1.0), ("version", 2**31),
    ("version", -2**31 - 1), ("model_version", 2**31),
])
def test_integer_dimensions_refuse_what_their_column_cannot_hold(world, dimension, value):
    definition = {"dataset": "prediction_logs", "metrics": ["prediction_count"],
                  "filters": [f(dimension, "eq", value)]}
    assert "expected an int (32-bit)" in _refused(definition)


def test_edges_of_accepted_values(world):
    def count(filter_):
        return run("prediction_logs", [], ["prediction_count"], filter_)

    zero = [{"prediction_count": 0}]
    assert count(f("version", "lte", 2**31 - 1)) == [{"prediction_count": 4}]
    assert count(f("version", "gte", -2**31)) == [{"prediction_count": 4}]
    assert count(f("model", "eq", "m" * 128)) == zero  # the column's length
    assert "at most 128 characters, got 129" in _refused({
        "dataset": "prediction_logs", "metrics": ["prediction_count"],
        "filters": [f("model", "eq", "m" * 129)]})
    longest = "_" + "p" * 63  # a parameter name of 64 characters
    assert execute_definition({"dataset": "prediction_logs", "metrics": ["prediction_count"],
                               "filters": [f("model", "eq", {"param": longest})]},
                              {longest: "cvr"}) == [{"prediction_count": 1}]
    assert run("spend", [], ["records"], f("source", "in", ["manual"] * MAX_IN)) == \
        [{"records": 2}]
    upper = str(world["cm"].id).upper()  # canonical text in either case, as writes take it
    assert run("spend", [], ["records"], f("campaign", "eq", upper)) == [{"records": 3}]


def test_params_fill_values_and_are_typed_when_run(world):
    definition = {"dataset": "spend", "metrics": ["records"], "filters": [
        f("date", "between", [{"param": "from"}, {"param": "to"}]),
        f("source", "in", {"param": "sources"})]}
    assert validate_definition(definition) is definition
    assert execute_definition(definition, {"from": "2026-01-25", "to": "2026-01-26",
                                           "sources": ["manual", "adjustment"]}) == \
        [{"records": 3}]
    for params, message in [
        (None, 'missing query parameter "from"'),
        ({"from": "2026-01-25", "to": "2026-01-26"}, 'missing query parameter "sources"'),
        ({"from": "2026-01-25", "to": "x", "sources": ["a"]}, "YYYY-MM-DD"),
        ({"from": "2026-01-25", "to": "2026-01-26", "sources": "manual"}, "needs a list"),
        ({"from": "2026-01-25", "to": "2026-01-26", "sources": []}, '"in" needs 1 to 1000'),
        ({"from": "2026-01-25", "to": "2026-01-26", "sources": ["m"] * (MAX_IN + 1)},
         '"in" needs 1 to 1000'),
        ({"from": "2026-01-25", "to": "2026-01-26", "sources": [5]}, "expected a str"),
        (["from"], "params must be a dict with text keys"),
        ({1: "x"}, "params must be a dict with text keys"),
    ]:
        assert message in _refused(definition, params), params
    for params in (["from"], {1: "x"}, "from=1"):
        assert _refused(definition, params) == "params must be a dict with text keys"
    # while saving, a filter whose value is a parameter does not stop the later ones' checks
    with pytest.raises(ValidationError) as info:
        validate_definition({**definition, "filters": [*definition["filters"],
                                                       f("source", "eq", 5)]})
    assert str(info.value) == ('filter 2 ("source" eq): expected a str of at most 16 '
                               "characters, got int")
    assert run("spend", [], ["records"], f("source", "in", ["manual"])) == [{"records": 2}]


def test_schema_errors_name_where_and_stop_after_three(world):
    message = _refused({"dataset": 5, "dimensions": "x", "metrics": None, "filters": 1,
                        "sort": 2, "limit": "3"})
    assert message == ("dataset: Input should be a valid string; dimensions: Input should be "
                       "a valid list; metrics: Input should be a valid list")
    assert _refused({**SPEND, "filters": [{"dimension": "source", "op": "eq"}]}) == (
        "filters.0.value: Field required")


@pytest.mark.parametrize("key,count,message", [
    ("dimensions", 17, "dimensions: List should have at most 16 items"),
    ("metrics", 33, "metrics: List should have at most 32 items"),
    ("filters", 33, "filters: List should have at most 32 items"),
    ("sort", 17, "sort: List should have at most 16 items"),
])
def test_list_lengths_are_capped(key, count, message):
    items = {"dimensions": "source", "metrics": "spend", "filters": f("source", "eq", "x"),
             "sort": {"by": "spend"}}[key]
    with pytest.raises(ValidationError, match=f"^{message}"):
        validate_definition({**SPEND, key: [items] * count})
    if key in ("filters", "sort"):
        assert validate_definition({**SPEND, key: [items] * (count - 1)})


def test_names_are_capped_at_64_characters():
    with pytest.raises(ValidationError, match="^dataset: String should have at most 64"):
        validate_definition({**SPEND, "dataset": "d" * 65})


# -- duplicates D9: the date filter uses the date columns' codec ----------------------------


@pytest.mark.parametrize("value", [
    "2026-01-26", JAN26, "2026-W05-1", "2026-01-26T00:00", "20260126", "2026-1-26",
    " 2026-01-26", "2026-01-26 ", "2026-02-30", dt.datetime(2026, 1, 26), 20260126, "",
])
def test_a_date_filter_refuses_exactly_what_a_date_column_refuses(world, value):
    """A filter and a write read dates by the one rule, on either backend."""
    try:
        expected = DateField.codec.validate(value)
    except ValidationError:
        expected = None
    filters = [f("date", "eq", value.isoformat() if isinstance(value, D) else value)]
    if expected is None:
        assert "expected a date or YYYY-MM-DD text" in _refused(
            {"dataset": "campaign_performance", "metrics": ["clicks"], "filters": filters})
        with pytest.raises(ValidationError):
            CampaignPerformance.create(campaign=world["cm"], date=value)
    else:
        assert run("campaign_performance", [], ["clicks"], *filters) == [{"clicks": 60}]
    # a parameter is typed by the same rule, dates themselves included
    definition = {"dataset": "campaign_performance", "metrics": ["clicks"],
                  "filters": [f("date", "eq", {"param": "day"})]}
    if expected is None:
        assert "expected a date or YYYY-MM-DD text" in _refused(definition, {"day": value})
    else:
        assert execute_definition(definition, {"day": value}) == [{"clicks": 60}]


def test_every_dataset_has_its_date_column_in_the_catalogue():
    assert {name: ds.date.name for name, ds in DATASETS.items()} == {
        "campaign_performance": "date", "ad_metrics": "date", "spend": "occurred_at",
        "prediction_logs": "created_at", "model_metrics": "recorded_at"}


def test_text_values_up_to_1024_characters_reach_the_column_rule(world):
    # 1024 characters pass the definition's own limit and meet the column's (16 for source)
    assert _refused({**SPEND, "filters": [f("source", "eq", "x" * MAX_TEXT_VALUE)]}) == (
        'filter 0 ("source" eq): expected a str of at most 16 characters, got 1,024')


def test_unknown_keys_are_named_by_their_first_40_characters():
    long = "k" * 50
    with pytest.raises(ValidationError) as info:
        validate_definition({**SPEND, long: 1, 7: 2})
    assert str(info.value) == (f"unknown definition keys: 7, {'k' * 40}; valid: dataset, "
                               "dimensions, metrics, filters, sort, limit")


def test_a_parameter_holding_a_mapping_is_one_value_too_many(world):
    definition = {**SPEND, "filters": [f("source", "eq", {"param": "s"})]}
    assert _refused(definition, {"s": {"a": 1}}) == (
        'filter 0 ("source" eq): "eq" takes one value, not a list')
    assert _refused(definition, {"s": ("manual",)}) == (
        'filter 0 ("source" eq): "eq" takes one value, not a list')
    assert execute_definition({**SPEND, "filters": [f("source", "in", {"param": "s"})]},
                              {"s": ("manual", "import")}) == [{"spend": Decimal(26)}]


def test_parameter_names_are_refused_with_the_rule():
    for name in ["1x", "x" * 65, 5, "a-b", ""]:
        with pytest.raises(ValidationError) as info:
            validate_definition({**SPEND, "filters": [f("source", "eq", {"param": name})]})
        assert str(info.value) == ("filters.0.value: a parameter name is a letter or _ then "
                                   "letters, digits or _ (at most 64)")
