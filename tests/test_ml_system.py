import datetime as dt
import subprocess
import sys
from decimal import Decimal

import pytest

from within_db import batch
from within_db.errors import (
    ConfigurationError,
    ConflictError,
    InvalidTransitionError,
    ValidationError,
)
from within_db.models.campaigns import CampaignPerformance
from within_db.models.ml_system import FeatureImportance, ModelMetric, ModelVersion, PredictionLog
from within_db.services import ml_system as ml

from .helpers import make_campaign


def test_register_model_and_duplicates(db):
    model = ml.register_model("ctr", "classification")
    assert model.id
    with pytest.raises(ConflictError):
        ml.register_model("ctr", "regression")
    with pytest.raises(ValidationError, match="task must be one of"):
        ml.register_model("x", "magic")


def test_versions_are_numbered_per_model(db):
    a, b = ml.register_model("a", "ranking"), ml.register_model("b", "ranking")
    assert [ml.create_version(a, f"s3://a/{i}").version for i in range(3)] == [1, 2, 3]
    assert ml.create_version(b, "s3://b/1").version == 1
    with pytest.raises(ValidationError):
        ml.create_version(a, "")


def test_stage_swap_keeps_one_production_version(db):
    model = ml.register_model("ctr", "classification")
    v1, v2, v3 = (ml.create_version(model, f"s3://m/{i}") for i in range(3))
    ml.transition_stage(v1, "production")
    ml.transition_stage(v2, "production")
    stages = {v.version: v.stage for v in ModelVersion.select().where(
        ModelVersion.model == model)}
    assert stages == {1: "archived", 2: "production", 3: "none"}
    assert ml.production_version("ctr").id == v2.id
    with pytest.raises(ConflictError):
        ml.transition_stage(v3, "production", archive_existing=False)
    assert ml.production_version("ctr").id == v2.id
    with pytest.raises(ValidationError):
        ml.transition_stage(v3, "prod")
    assert ml.production_version("unknown") is None


def test_training_job_lifecycle(db):
    model = ml.register_model("ctr", "classification")
    job = ml.queue_training_job(model, parameters={"lr": 0.1})
    assert job.status == "queued"
    ml.mark_running(job)
    version = ml.mark_succeeded(job, "s3://ctr/1", metrics={"auc": 0.81, "logloss": 0.4})
    assert version.training_job_id == job.id and version.hyperparameters == {"lr": 0.1}
    assert ModelMetric.select().where(ModelMetric.model_version == version.id).count() == 2
    failed = ml.queue_training_job(model)
    ml.mark_running(failed)
    ml.mark_failed(failed, "out of memory")
    assert type(failed).get_by_id(failed.id).error == "out of memory"
    queued = ml.queue_training_job(model)
    assert ml.mark_cancelled(queued).status == "cancelled"


ILLEGAL = [
    ("queued", "mark_succeeded"), ("queued", "mark_failed"),
    ("succeeded", "mark_running"), ("succeeded", "mark_failed"), ("succeeded", "mark_cancelled"),
    ("failed", "mark_running"), ("failed", "mark_succeeded"), ("failed", "mark_cancelled"),
    ("cancelled", "mark_running"), ("cancelled", "mark_succeeded"), ("running", "mark_running"),
]


@pytest.mark.parametrize("state,action", ILLEGAL)
def test_illegal_training_job_transitions(db, state, action):
    model = ml.register_model("m", "classification")
    job = ml.queue_training_job(model)
    path = {"queued": [], "running": ["mark_running"],
            "succeeded": ["mark_running", "mark_succeeded"],
            "failed": ["mark_running", "mark_failed"], "cancelled": ["mark_cancelled"]}[state]
    for step in path:
        getattr(ml, step)(job, "boom") if step == "mark_failed" else getattr(ml, step)(job)
    with pytest.raises(InvalidTransitionError, match=f"is {state}"):
        if action == "mark_failed":
            ml.mark_failed(job, "x")
        else:
            getattr(ml, action)(job)
    assert type(job).get_by_id(job.id).status == state


def test_metrics_importances_and_predictions(db):
    model = ml.register_model("ctr", "classification")
    version = ml.create_version(model, "s3://ctr/1")
    assert ml.log_metrics(version, {"auc": 0.9, "loss": 0.2}, split="test", step=3) == 2
    with pytest.raises(ValidationError):
        ml.log_metrics(version, {"auc": 1}, split="holdout")
    ml.log_feature_importance(version, {"a": 0.1, "b": 0.7, "c": 0.2})
    ml.log_feature_importance(version, {"x": 0.5, "y": 0.9})
    ranks = {f.feature: f.rank for f in FeatureImportance.select()}
    assert ranks == {"y": 1, "x": 2}
    n = ml.log_predictions(version, ({"request_id": f"r{i}", "score": i / 10} for i in range(10)))
    assert n == 10 and PredictionLog.select().where(
        PredictionLog.model_version == version.id).count() == 10


def test_training_rows_join_campaign_attributes(db):
    campaign = make_campaign(platform="meta", objective="leads")
    other = make_campaign(platform="google")
    for day in range(3):
        for c in (campaign, other):
            CampaignPerformance.create(campaign=c, date=dt.date(2026, 1, 1 + day),
                                       impressions=100, clicks=5,
                                       spend_micros=Decimal("1.5"))
    rows = list(ml.training_rows(dt.date(2026, 1, 2), dt.date(2026, 1, 3), platforms=["meta"]))
    assert [(r["date"], r["platform"], r["objective"]) for r in rows] == [
        (dt.date(2026, 1, 2), "meta", "leads"), (dt.date(2026, 1, 3), "meta", "leads")]
    assert rows[0]["spend_micros"] == Decimal("1.5") and rows[0]["campaign_id"] == campaign.id
    with pytest.raises(ValidationError):
        list(ml.training_rows(dt.date(2026, 1, 3), dt.date(2026, 1, 1)))


def test_to_dataframe_types_columns_from_fields(db):
    import pandas as pd  # from the dev extra
    campaign = make_campaign()
    CampaignPerformance.create(campaign=campaign, date=dt.date(2026, 1, 2), impressions=10,
                               clicks=1, spend_micros=Decimal("2.5"))
    version = ml.create_version(ml.register_model("m", "ranking"), "s3://m/1")
    ml.log_predictions(version, [{"request_id": "a", "score": 0.5, "features": {"x": 1}}])
    perf = batch.to_dataframe(CampaignPerformance.select())
    assert str(perf["impressions"].dtype) == "Int64"
    assert str(perf["campaign"].dtype).startswith("str") and perf["campaign"][0] == str(
        campaign.id)
    assert pd.api.types.is_datetime64_any_dtype(perf["date"])
    assert perf["spend_micros"].dtype == "float64" and perf["spend_micros"][0] == 2.5
    preds = batch.to_dataframe(PredictionLog.select())
    assert str(preds["created_at"].dtype).endswith("UTC]")
    assert preds["features"][0] == {"x": 1} and preds["score"].dtype == "float64"
    empty = batch.to_dataframe(PredictionLog.select().where(PredictionLog.id < 0))
    assert len(empty) == 0 and "request_id" in empty.columns


def test_to_dataframe_explains_the_extra_without_pandas(db, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ConfigurationError, match=r"within_db\[ml\]"):
        batch.to_dataframe(PredictionLog.select())


def test_concurrent_version_creation_never_collides(migrated_fresh_db, fresh_url):
    with migrated_fresh_db.connection_context():
        model = ml.register_model("shared", "classification")
    code = (
        "import sys, within_db\n"
        "from within_db.models.ml_system import MLModel\n"
        "from within_db.services.ml_system import create_version\n"
        "within_db.connect(sys.argv[1])\n"
        "model = MLModel.get_by_id(int(sys.argv[2]))\n"
        "for i in range(10):\n"
        "    create_version(model, 's3://x')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, fresh_url, str(model.id)],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    with migrated_fresh_db.connection_context():
        numbers = sorted(v.version for v in ModelVersion.select())
    assert numbers == list(range(1, 41))
