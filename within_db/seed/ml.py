"""Seed the model registry: models, training jobs in every status, versions (one production
per model), metrics, feature importances and prediction logs."""

from __future__ import annotations

import datetime as dt
import math
import uuid

from within_db import partitions
from within_db.models.ml_system import (
    JOB_STATUSES,
    MLModel,
    ModelMetric,
    ModelVersion,
    TrainingJob,
)
from within_db.models.users import User
from within_db.seed.common import REFERENCE, SeedContext
from within_db.services import ml_system as svc

__all__ = ["seed_ml"]

FEATURES = ("ctr_7d", "ctr_28d", "cpc_7d", "impressions_7d", "platform", "objective",
            "creative_type", "hour_of_day", "day_of_week", "audience", "budget_utilisation",
            "headline_length")
FRAMEWORKS = ("xgboost", "lightgbm", "pytorch", "sklearn")
METRICS = {"classification": ("auc", "logloss", "precision", "recall"),
           "regression": ("rmse", "mae", "r2"),
           "ranking": ("ndcg_10", "map"),
           "forecasting": ("mape", "rmse")}
PREDICTION_DAYS = 30  # prediction logs fall in the days before REFERENCE
NAMES = ("ctr", "cvr", "bid", "budget-pacing", "creative-rank", "spend-forecast", "fraud",
         "audience", "ltv", "churn", "anomaly", "roas")


def seed_ml(ctx: SeedContext, users: list[User], ad_ids: list[uuid.UUID]) -> None:
    rng, scale = ctx.rng, ctx.scale
    scientists = users[: max(1, len(users) // 4)]
    production = []
    for i in range(scale.models):
        task = "regression" if i % 4 == 2 else "forecasting" if i % 4 == 3 else "classification"
        name = f"{NAMES[i % len(NAMES)]}-{task}-v{i // len(NAMES) + 1}{ctx.suffix}"
        created = ctx.instant(300, 150)
        model = svc.register_model(name, task, description=ctx.fake.sentence(),
                                   owner=rng.choice(scientists), now=created)
        # one job in every status, plus a succeeded job per version
        for status in JOB_STATUSES:
            _job(ctx, model, status, created)
        versions = []
        for v in range(scale.versions_per_model):
            job = _job(ctx, model, "succeeded", created + dt.timedelta(days=10 * v))
            version = ModelVersion.create(
                model=model, version=v + 1, artifact_uri=f"s3://models/{name}/{v + 1}/model.bin",
                framework=rng.choice(FRAMEWORKS), training_job=job,
                hyperparameters={"learning_rate": round(rng.uniform(0.01, 0.3), 3),
                                 "max_depth": rng.randint(3, 10),
                                 "n_estimators": rng.choice([100, 200, 500])},
                created_at=job.finished_at)
            versions.append(version)
            _metrics(ctx, version, task)
        stages = ["archived"] * (len(versions) - 2) + ["production", "staging"]
        for version, stage in zip(versions, stages, strict=True):
            svc.transition_stage(version, stage)
            if stage in ("production", "staging"):
                production.append(version)
        svc.log_feature_importance(versions[-2], {
            f: round(rng.uniform(0.0, 1.0), 6) for f in rng.sample(FEATURES, 8)})
        ctx.progress("models", 1)
    _predictions(ctx, production, ad_ids)


def _job(ctx: SeedContext, model: MLModel, status: str, queued_at: dt.datetime) -> TrainingJob:
    rng = ctx.rng
    started = queued_at + dt.timedelta(minutes=rng.randint(1, 120))
    finished = started + dt.timedelta(minutes=rng.randint(5, 600))
    job = TrainingJob.create(
        model=model, status=status, created_at=queued_at, updated_at=queued_at,
        parameters={"epochs": rng.randint(5, 50), "seed": rng.randint(0, 10_000)},
        dataset_spec={"table": "campaign_performance", "days": rng.choice([30, 60, 90])},
        started_at=None if status == "queued" else started,
        finished_at=finished if status in ("succeeded", "failed", "cancelled") else None,
        error="CUDA out of memory" if status == "failed" else None)
    return job


def _metrics(ctx: SeedContext, version: ModelVersion, task: str) -> None:
    rng = ctx.rng
    rows = []
    for split in ("train", "validation", "test"):
        for name in METRICS[task]:
            for step in (None, 1, 2, 3) if split == "train" else (None,):
                rows.append({"model_version": version.id, "name": name,
                             "value": round(rng.uniform(0.05, 0.95), 6), "split": split,
                             "step": step, "recorded_at": version.created_at})
    ModelMetric.insert_many(rows).execute()


def _predictions(ctx: SeedContext, versions: list[ModelVersion],
                 ad_ids: list[uuid.UUID]) -> None:
    rng = ctx.rng
    if not versions:
        return
    per_version = math.ceil(ctx.scale.predictions / len(versions))
    earliest = REFERENCE - dt.timedelta(days=PREDICTION_DAYS)
    partitions.ensure(since=earliest.date())  # past months have no partition yet on PostgreSQL
    total = 0
    for version in versions:
        n = min(per_version, ctx.scale.predictions - total)
        rows = ({"request_id": ctx.hexid(16), "ad": rng.choice(ad_ids) if ad_ids else None,
                 "score": round(rng.betavariate(2, 8), 6),
                 "features": {"ctr_7d": round(rng.uniform(0, 0.05), 5),
                              "platform": rng.choice(["google", "meta", "tiktok"]),
                              "hour_of_day": rng.randint(0, 23)},
                 "latency_ms": round(rng.lognormvariate(1.5, 0.4), 3),
                 "created_at": REFERENCE - dt.timedelta(
                     seconds=rng.randint(0, PREDICTION_DAYS * 86400))}
                for _ in range(n))
        written = svc.log_predictions(version, rows)
        total += written
        ctx.progress("predictions", written)
